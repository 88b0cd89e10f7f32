// Preloaded (node --require) into test peers whose servers listen on every
// interface by default: a listen() given only a port binds 127.0.0.1 instead,
// so tests never open a port beyond the loopback interface.
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const portOnly = typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]));
  if (portOnly && typeof args[1] !== "string") {
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
