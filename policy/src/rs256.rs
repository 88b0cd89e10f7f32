//! RS256 verification: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2.2).
//!
//! A token's signature is checked with a public key, so nothing here is
//! secret and nothing needs constant time; what matters is the cost, because
//! every token the filter has not seen — a forged one with a valid `kid`
//! included — pays for one verification inside Envoy. Generic big-number
//! code spends most of it allocating and on a windowed exponentiation built
//! for long private exponents. A public exponent is short (65537 has 17
//! bits), so this squares and multiplies fixed-size integers in Montgomery
//! form, with the modulus's constants computed once, when the key is read.
//!
//! The check is by construction, not by parsing: the expected encoded
//! message (`00 01 FF… 00 DigestInfo hash`) is built and compared with the
//! signature raised to the exponent, so no padding or ASN.1 parser is
//! exposed to the attacker's bytes.

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Limb, U2048, U3072, U4096, Uint, Word};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use thiserror::Error;

/// Shorter keys are refused.
pub const MIN_BITS: usize = 2048;
/// Longer keys are refused (Entra signs with 2048-bit keys).
pub const MAX_BITS: usize = 4096;

/// The DER prefix of a SHA-256 `DigestInfo` (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("RSA modulus of {0} bits; between {MIN_BITS} and {MAX_BITS} are accepted")]
    Size(usize),
    #[error("RSA modulus is even")]
    EvenModulus,
    #[error("RSA exponent must be odd, at least 3 and below 2^32")]
    Exponent,
}

/// An RSA public key, ready to verify.
#[derive(Clone)]
pub struct PublicKey {
    /// Big-endian, without leading zeros.
    modulus: Box<[u8]>,
    /// The modulus's Montgomery constants, computed on the first
    /// verification: they cost a few milliseconds in wasm, and a key set
    /// holds several keys of which tokens are signed with one.
    montgomery: OnceLock<Option<Modulus>>,
    exponent: u32,
    /// The modulus's length in bytes: every signature has exactly this length.
    length: usize,
    bits: usize,
}

/// The modulus in the smallest fixed size that holds it (boxed: a
/// modulus and its constants are four integers of that size).
#[derive(Clone)]
enum Modulus {
    Bits2048(Box<DynResidueParams<{ U2048::LIMBS }>>),
    Bits3072(Box<DynResidueParams<{ U3072::LIMBS }>>),
    Bits4096(Box<DynResidueParams<{ U4096::LIMBS }>>),
}

impl PublicKey {
    /// A key from its big-endian modulus and exponent (a JWK's decoded `n` and `e`).
    pub fn from_components(modulus: &[u8], exponent: &[u8]) -> Result<PublicKey, KeyError> {
        let modulus = strip_leading_zeros(modulus);
        let bits = match modulus.first() {
            Some(top) => modulus.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(KeyError::Size(bits));
        }
        if modulus.last().is_some_and(|low| low & 1 == 0) {
            return Err(KeyError::EvenModulus);
        }
        let exponent = strip_leading_zeros(exponent);
        if exponent.len() > 4 {
            return Err(KeyError::Exponent);
        }
        let exponent = exponent.iter().fold(0u32, |e, b| (e << 8) | u32::from(*b));
        if exponent < 3 || exponent & 1 == 0 {
            return Err(KeyError::Exponent);
        }
        Ok(PublicKey {
            modulus: modulus.into(),
            montgomery: OnceLock::new(),
            exponent,
            length: modulus.len(),
            bits,
        })
    }

    /// The modulus's length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Whether `signature` is this key's RS256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != self.length {
            return false;
        }
        let recovered = match self.montgomery.get_or_init(|| Modulus::new(&self.modulus)) {
            Some(Modulus::Bits2048(params)) => power(params, signature, self.exponent, self.length),
            Some(Modulus::Bits3072(params)) => power(params, signature, self.exponent, self.length),
            Some(Modulus::Bits4096(params)) => power(params, signature, self.exponent, self.length),
            None => None,
        };
        recovered.is_some_and(|encoded| encoded == expected_encoding(message, self.length))
    }
}

impl Modulus {
    /// `None` only for a modulus longer than 4096 bits, which
    /// `PublicKey::from_components` refuses.
    fn new(modulus: &[u8]) -> Option<Modulus> {
        Some(if modulus.len() <= U2048::BYTES {
            Modulus::Bits2048(residue_params(modulus)?)
        } else if modulus.len() <= U3072::BYTES {
            Modulus::Bits3072(residue_params(modulus)?)
        } else {
            Modulus::Bits4096(residue_params(modulus)?)
        })
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[zeros..]
}

fn residue_params<const LIMBS: usize>(modulus: &[u8]) -> Option<Box<DynResidueParams<LIMBS>>> {
    // Odd was checked by the caller: `new` panics on an even modulus.
    from_be_bytes(modulus).map(|n| Box::new(DynResidueParams::new(&n)))
}

/// `signature^exponent mod n` as `length` big-endian bytes, or `None` when
/// the signature is not below the modulus (RFC 8017 §5.2.2).
fn power<const LIMBS: usize>(
    params: &DynResidueParams<LIMBS>,
    signature: &[u8],
    exponent: u32,
    length: usize,
) -> Option<Vec<u8>> {
    let signature = from_be_bytes::<LIMBS>(signature)?;
    if signature >= *params.modulus() {
        return None;
    }
    let base = DynResidue::new(&signature, *params);
    let mut acc = base;
    let top = u32::BITS - 1 - exponent.leading_zeros();
    for bit in (0..top).rev() {
        acc = acc.square();
        if (exponent >> bit) & 1 == 1 {
            acc = acc.mul(&base);
        }
    }
    to_be_bytes(&acc.retrieve(), length)
}

/// The integer whose big-endian bytes these are, if it fits.
fn from_be_bytes<const LIMBS: usize>(bytes: &[u8]) -> Option<Uint<LIMBS>> {
    if bytes.len() > LIMBS * Limb::BYTES {
        return None;
    }
    let mut words = [0 as Word; LIMBS];
    // Limbs are little-endian: the last bytes make the first word.
    for (word, chunk) in words.iter_mut().zip(bytes.rchunks(Limb::BYTES)) {
        *word = chunk.iter().fold(0, |w, b| (w << 8) | Word::from(*b));
    }
    Some(Uint::from_words(words))
}

/// `value` as exactly `length` big-endian bytes, or `None` when it needs more.
fn to_be_bytes<const LIMBS: usize>(value: &Uint<LIMBS>, length: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(LIMBS * Limb::BYTES);
    for word in value.as_words().iter().rev() {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    let excess = bytes.len().checked_sub(length)?;
    if bytes[..excess].iter().any(|b| *b != 0) {
        return None;
    }
    bytes.drain(..excess);
    Some(bytes)
}

/// EMSA-PKCS1-v1_5 of `message` in `length` bytes (RFC 8017 §9.2).
fn expected_encoding(message: &[u8], length: usize) -> Vec<u8> {
    let padding = length - 3 - SHA256_DIGEST_INFO.len() - 32;
    let mut encoded = Vec::with_capacity(length);
    encoded.extend_from_slice(&[0x00, 0x01]);
    encoded.resize(2 + padding, 0xff);
    encoded.push(0x00);
    encoded.extend_from_slice(&SHA256_DIGEST_INFO);
    encoded.extend_from_slice(&Sha256::digest(message));
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use rsa::{BigUint, RsaPrivateKey};

    /// Keys of each accepted size, generated once (RSA key generation is slow).
    fn private_key(bits: usize) -> &'static RsaPrivateKey {
        static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            [2048, 3072, 4096]
                .iter()
                .map(|bits| RsaPrivateKey::new(&mut rng, *bits).unwrap())
                .collect()
        });
        keys.iter().find(|k| k.size() * 8 == bits).unwrap()
    }

    fn public(key: &RsaPrivateKey) -> PublicKey {
        PublicKey::from_components(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap()
    }

    /// Signed by another implementation, so the two agree on the encoding.
    fn sign(key: &RsaPrivateKey, message: &[u8]) -> Vec<u8> {
        let der = key.to_pkcs1_der().unwrap();
        let key = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
        let signature =
            jsonwebtoken::crypto::sign(message, &key, jsonwebtoken::Algorithm::RS256).unwrap();
        URL_SAFE_NO_PAD.decode(signature).unwrap()
    }

    #[test]
    fn verifies_signatures_of_every_accepted_size() {
        for bits in [2048, 3072, 4096] {
            let key = private_key(bits);
            let public = public(key);
            assert_eq!(public.bits(), bits);
            let signature = sign(key, b"header.claims");
            assert!(public.verify(b"header.claims", &signature), "{bits}");
            assert!(!public.verify(b"header.claimz", &signature), "{bits}");
        }
    }

    #[test]
    fn refuses_signatures_of_the_wrong_length_or_not_below_the_modulus() {
        let key = private_key(2048);
        let public = public(key);
        let signature = sign(key, b"m");
        let mut longer = vec![0];
        longer.extend_from_slice(&signature);
        assert!(!public.verify(b"m", &longer), "a leading zero byte");
        assert!(!public.verify(b"m", &signature[1..]));
        assert!(!public.verify(b"m", &[]));
        // s + n has the same residue but is not a valid representative.
        let shifted = BigUint::from_bytes_be(&signature) + key.n();
        let shifted = shifted.to_bytes_be();
        if shifted.len() == signature.len() {
            assert!(!public.verify(b"m", &shifted));
        }
        assert!(!public.verify(b"m", &key.n().to_bytes_be()));
        assert!(!public.verify(b"m", &vec![0xff; 256]));
    }

    #[test]
    fn refuses_unusable_keys() {
        let key = private_key(2048);
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        let cases: [(&[u8], &[u8], KeyError); 7] = [
            (&[0xff; 255], &e, KeyError::Size(2040)),
            (&[], &e, KeyError::Size(0)),
            (&[0xff; 513], &e, KeyError::Size(4104)),
            (&even, &e, KeyError::EvenModulus),
            (&n, &[1], KeyError::Exponent),
            (&n, &[1, 0, 0], KeyError::Exponent),
            (&n, &[1, 0, 0, 0, 1], KeyError::Exponent),
        ];
        for (modulus, exponent, error) in cases {
            assert_eq!(
                PublicKey::from_components(modulus, exponent).err(),
                Some(error)
            );
        }
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&n);
        assert!(PublicKey::from_components(&padded, &[0, 1, 0, 1]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The exponentiation agrees with a general big-number library for
        /// any representative, so only the encoding decides.
        #[test]
        fn the_power_agrees_with_modpow(signature in proptest::collection::vec(any::<u8>(), 256), exponent in (1u32..u32::MAX / 2).prop_map(|e| 2 * e + 1)) {
            let key = private_key(2048);
            let Some(Modulus::Bits2048(params)) = Modulus::new(&key.n().to_bytes_be()) else {
                unreachable!()
            };
            let s = BigUint::from_bytes_be(&signature);
            let ours = power(&params, &signature, exponent, 256);
            if &s >= key.n() {
                prop_assert_eq!(ours, None);
            } else {
                let theirs = s.modpow(&BigUint::from(exponent), key.n()).to_bytes_be();
                let mut theirs_padded = vec![0; 256 - theirs.len()];
                theirs_padded.extend_from_slice(&theirs);
                prop_assert_eq!(ours, Some(theirs_padded));
            }
        }

        #[test]
        fn a_changed_byte_never_verifies(message in proptest::collection::vec(any::<u8>(), 0..64), at in any::<prop::sample::Index>(), flip in 1u8..) {
            let key = private_key(2048);
            let public = public(key);
            let mut signature = sign(key, &message);
            prop_assert!(public.verify(&message, &signature));
            let at = at.index(signature.len());
            signature[at] ^= flip;
            prop_assert!(!public.verify(&message, &signature));
        }
    }
}
