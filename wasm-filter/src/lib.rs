//! Airlock's Envoy filter (proxy-wasm).
//!
//! This is the host glue: it will translate Envoy's callbacks into calls on
//! `airlock-policy` and back. For now it only proves the module loads in
//! Envoy's V8 runtime and sees every stream: each response carries
//! `x-airlock-filter` naming the module version.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AirlockRoot) });
}}

/// The response header that marks a stream as having passed through the filter.
pub const FILTER_HEADER: &str = "x-airlock-filter";

struct AirlockRoot;

impl Context for AirlockRoot {}

impl RootContext for AirlockRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AirlockStream))
    }
}

struct AirlockStream;

impl Context for AirlockStream {}

impl HttpContext for AirlockStream {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header(FILTER_HEADER, Some(env!("CARGO_PKG_VERSION")));
        Action::Continue
    }
}
