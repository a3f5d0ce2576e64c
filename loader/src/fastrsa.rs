//! RSA PKCS#1 v1.5 signature verification with Montgomery arithmetic from `crypto-bigint` (already in the tree
//! through the elliptic-curve crates), for the common 2048/3072/4096-bit moduli with a 64-bit public exponent.
//! Verifying Debian's 4,000 modules is dominated by the public-key operation otherwise; other key sizes use the
//! `rsa` crate. Public data only, so timing does not matter; the result is compared with the full expected
//! encoding (`00 01 FF.. 00 DigestInfo`).

use crypto_bigint::Uint;
use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use rsa::traits::PublicKeyParts;

/// Montgomery parameters of one RSA public key.
#[derive(Debug, Clone)]
pub struct FastRsa {
    params: Params,
    e: u64,
    e_bits: usize,
    k: usize,
}

#[derive(Debug, Clone)]
enum Params {
    B2048(Box<DynResidueParams<32>>),
    B3072(Box<DynResidueParams<48>>),
    B4096(Box<DynResidueParams<64>>),
}

fn padded<const L: usize>(bytes: &[u8]) -> Option<Uint<L>> {
    let width = L * 8;
    if bytes.len() > width {
        return None;
    }
    let mut buf = vec![0u8; width];
    buf[width - bytes.len()..].copy_from_slice(bytes);
    Some(Uint::<L>::from_be_slice(&buf))
}

fn params<const L: usize>(n: &[u8]) -> Option<DynResidueParams<L>> {
    if n.last()? & 1 == 0 {
        return None;
    }
    Some(DynResidueParams::new(&padded::<L>(n)?))
}

fn pow<const L: usize>(
    p: &DynResidueParams<L>,
    sig: &[u8],
    e: u64,
    e_bits: usize,
) -> Option<Vec<u8>> {
    let s = padded::<L>(sig)?;
    if s >= *p.modulus() {
        return None;
    }
    let r = DynResidue::new(&s, *p)
        .pow_bounded_exp(&Uint::<1>::from_u64(e), e_bits)
        .retrieve();
    Some(
        r.as_words()
            .iter()
            .rev()
            .flat_map(|w| w.to_be_bytes())
            .collect(),
    )
}

impl FastRsa {
    /// Precomputes the parameters of `key`, or `None` when its size or exponent has no fast path.
    pub fn new(key: &rsa::RsaPublicKey) -> Option<FastRsa> {
        let n = key.n().to_bytes_be();
        let e_bytes = key.e().to_bytes_be();
        if e_bytes.len() > 8 {
            return None;
        }
        let e = e_bytes
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let e_bits = 64 - e.leading_zeros() as usize;
        let params = match n.len() {
            256 => Params::B2048(Box::new(params::<32>(&n)?)),
            384 => Params::B3072(Box::new(params::<48>(&n)?)),
            512 => Params::B4096(Box::new(params::<64>(&n)?)),
            _ => return None,
        };
        Some(FastRsa {
            params,
            e,
            e_bits,
            k: n.len(),
        })
    }

    /// Verifies `sig` over `digest` with the DigestInfo `prefix` (from `rsa::Pkcs1v15Sign`).
    pub fn verify(&self, prefix: &[u8], digest: &[u8], sig: &[u8]) -> bool {
        if sig.len() != self.k || self.k < prefix.len() + digest.len() + 11 {
            return false;
        }
        let m = match &self.params {
            Params::B2048(p) => pow(p, sig, self.e, self.e_bits),
            Params::B3072(p) => pow(p, sig, self.e, self.e_bits),
            Params::B4096(p) => pow(p, sig, self.e, self.e_bits),
        };
        let Some(m) = m else { return false };
        let em = &m[m.len() - self.k..];
        let t_len = prefix.len() + digest.len();
        let ps_end = self.k - t_len - 1;
        em[0] == 0
            && em[1] == 1
            && em[2..ps_end].iter().all(|&b| b == 0xff)
            && em[ps_end] == 0
            && &em[ps_end + 1..ps_end + 1 + prefix.len()] == prefix
            && &em[ps_end + 1 + prefix.len()..] == digest
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::keys::SigningKey;
    use crate::test_keys::TestKey;

    #[test]
    fn agrees_with_the_rsa_crate() {
        for bits in [2048, 3072, 4096] {
            let key = TestKey::rsa(bits);
            let SigningKey::Rsa(private) = key.signer().key else {
                panic!()
            };
            let public = private.to_public_key();
            let fast = FastRsa::new(&public).unwrap();
            let scheme = rsa::Pkcs1v15Sign::new::<sha2::Sha256>();
            let digest = crate::signature::HashAlgo::Sha256.digest(b"module bytes");
            let sig = private
                .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
                .unwrap();
            assert!(fast.verify(&scheme.prefix, &digest, &sig));
            assert!(public.verify(scheme, &digest, &sig).is_ok());
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert!(!fast.verify(
                &rsa::Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
                &digest,
                &bad
            ));
            let other = crate::signature::HashAlgo::Sha256.digest(b"other bytes");
            assert!(!fast.verify(
                &rsa::Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
                &other,
                &sig
            ));
            assert!(!fast.verify(
                &rsa::Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
                &digest,
                &sig[1..]
            ));
            // A value >= n is rejected, not reduced.
            assert!(!fast.verify(
                &rsa::Pkcs1v15Sign::new::<sha2::Sha256>().prefix,
                &digest,
                &vec![0xff; sig.len()]
            ));
        }
    }
}
