//! TLS with rustls (ring provider), following libpq's `sslmode` (see [`crate::conninfo`]),
//! and the `tls-server-end-point` channel binding data SCRAM-SHA-256-PLUS needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::conninfo::{is_system_root, ConnParams, SslMode};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration `params.sslmode` asks for (None for `disable`).
///
/// As libpq: `require` with a root certificate (given, or `~/.postgresql/root.crt`) checks
/// the chain like `verify-ca`; the verify modes need a root certificate and never fall back
/// to the web's roots unless told so with `sslrootcert=system`.
pub fn client_config(params: &ConnParams) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let root = root_cert_file(params);
    let mode = match params.sslmode {
        SslMode::Require if root.is_some() => SslMode::VerifyCa,
        m => m,
    };
    let config = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = root.ok_or_else(|| {
                format!(
                    "sslmode={} needs the certificate of the authority that signed the server's: set sslrootcert=/path/to/root.crt (or put it in ~/.postgresql/root.crt), or sslrootcert=system to trust the usual web authorities",
                    mode.name()
                )
            })?;
            let roots = Arc::new(root_store(&root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> =
                if mode == SslMode::VerifyFull { webpki } else { Arc::new(ChainOnly(webpki)) };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `sslrootcert`, else libpq's default `~/.postgresql/root.crt` when it exists.
fn root_cert_file(params: &ConnParams) -> Option<PathBuf> {
    params.sslrootcert.clone().or_else(crate::conninfo::default_root_cert)
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    if is_system_root(path) {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        store.add(cert).map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {} holds no certificate", path.display()));
    }
    Ok(store)
}

/// The name to check the server certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}

/// `sslmode=require`/`prefer`: encryption without authentication of the server, as libpq.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A configuration that encrypts without checking the server at all: for sessions whose
/// `sslmode` never starts TLS but whose library wants a connector anyway.
pub fn unverified_config() -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    ))
}

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929 4.1):
/// its hash with the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1
/// (and for anything this does not recognise, as PostgreSQL's own choice would fail there).
pub fn end_point_hash(cert_der: &[u8]) -> Vec<u8> {
    match signature_algorithm(cert_der) {
        Some(oid) if SHA384_SIGNATURES.contains(&oid) => sha2::Sha384::digest(cert_der).to_vec(),
        Some(oid) if SHA512_SIGNATURES.contains(&oid) => sha2::Sha512::digest(cert_der).to_vec(),
        _ => sha2::Sha256::digest(cert_der).to_vec(),
    }
}

/// DER contents of the signature algorithm OIDs that use SHA-384 and SHA-512.
const SHA384_SIGNATURES: [&[u8]; 2] = [
    &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C], // sha384WithRSAEncryption
    &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
];
const SHA512_SIGNATURES: [&[u8]; 2] = [
    &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D], // sha512WithRSAEncryption
    &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
];

/// The OID of a certificate's outer `signatureAlgorithm`
/// (`Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`).
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, the bytes after it). None when truncated or malformed.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &d| (acc << 8) | d as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate skeleton: SEQUENCE { tbs, SEQUENCE { OID }, BIT STRING }.
    fn cert(oid: &[u8], tbs_len: usize) -> Vec<u8> {
        let mut tbs = vec![0x30, 0x82, (tbs_len >> 8) as u8, tbs_len as u8];
        tbs.extend(std::iter::repeat_n(0u8, tbs_len));
        let mut alg = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let sig = [0x03, 0x02, 0x00, 0xFF];
        let body_len = tbs.len() + alg.len() + sig.len();
        let mut der = vec![0x30, 0x82, (body_len >> 8) as u8, body_len as u8];
        der.extend(tbs);
        der.extend(alg);
        der.extend(sig);
        der
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        let sha256_rsa = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
        let sha1_rsa = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05];
        for (oid, len) in
            [(&sha256_rsa[..], 32), (&sha1_rsa[..], 32), (SHA384_SIGNATURES[1], 48), (SHA512_SIGNATURES[0], 64)]
        {
            let der = cert(oid, 300);
            assert_eq!(signature_algorithm(&der), Some(oid));
            assert_eq!(end_point_hash(&der).len(), len);
        }
        let der = cert(&sha256_rsa, 300);
        assert_eq!(end_point_hash(&der), sha2::Sha256::digest(&der).to_vec());
    }

    #[test]
    fn malformed_certificates_never_panic() {
        for n in 0..40 {
            let der = cert(SHA384_SIGNATURES[0], 10);
            let _ = end_point_hash(&der[..n.min(der.len())]);
        }
        assert_eq!(signature_algorithm(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(end_point_hash(b"").len(), 32);
    }
}
