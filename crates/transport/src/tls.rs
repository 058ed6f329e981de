//! Peer authentication (`protocol.md` §3): mutual TLS 1.3, certificates that name an agency,
//! a CA bundle with CRLs, and SPKI pins from trusted agency cards.
//!
//! A certificate names its agency with one DNS subject-alternative name `<agency id>.rogatory.invalid`
//! (the reserved `.invalid` TLD never resolves; it is a name, not an address). A peer is accepted
//! when all of these hold:
//! 0. its certificate's key (SPKI) is not revoked by a signed key revocation (`custody.md` §8.3),
//!    whether the certificate is CA-issued or self-signed;
//! 1. its certificate names exactly one agency, and that agency is known (trust store);
//! 2. if the agency's card pins SPKI hashes, the certificate's SPKI is one of them;
//! 3. the certificate chains to the CA bundle, is within its validity period, and is not revoked
//!    by a configured CRL (`enforce_revocation_expiration`: an expired CRL fails closed); or,
//!    when it does not chain to the bundle (or there is none), it is **pinned** (rule 2 matched a
//!    pin) and within its validity period.
//!
//! The authenticated peer identity is that agency id ([`PeerIdentity`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use rogatory_custody::{AgencyId, Sha256Digest};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

/// The DNS suffix that carries the agency id in a certificate.
pub const NAME_SUFFIX: &str = ".rogatory.invalid";

/// The DNS name that identifies `agency` in its certificate.
pub fn agency_dns_name(agency: &AgencyId) -> String {
    format!("{}{NAME_SUFFIX}", agency.as_str())
}

/// The crypto provider: aws-lc-rs (`protocol.md` §2). Its default key exchange puts the hybrid
/// post-quantum group X25519MLKEM768 first; we put AES-128-GCM first among the TLS 1.3 suites
/// (cheapest packet protection here; QUIC needs it for Initial packets anyway), then AES-256-GCM
/// and ChaCha20-Poly1305 for peers without AES hardware. Every key-exchange group is wrapped so
/// that a connection can report the group it negotiated ([`crate::kx`]).
pub fn provider() -> Arc<CryptoProvider> {
    provider_for(false)
}

/// [`provider`], with only X25519MLKEM768 when `post_quantum_only` (a peer that does not offer
/// it then fails the handshake: no group in common).
pub(crate) fn provider_for(post_quantum_only: bool) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    if post_quantum_only {
        p.kx_groups
            .retain(|g| g.name() == crate::kx::POST_QUANTUM_GROUP);
    }
    p.kx_groups = crate::kx::observe(&p.kx_groups);
    Arc::new(p)
}

/// A TLS configuration problem (bad file, bad certificate, bad key).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file or item.
        what: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate does not name exactly one agency.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// This node's certificate chain and private key.
pub struct TlsIdentity {
    /// End-entity certificate first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

// Its private key is compared only in constant time, if ever (test-plan.md 69).
rogatory_custody::assert_not_partial_eq!(TlsIdentity);

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// From DER.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        if chain.is_empty() {
            return Err(TlsConfigError::Certificate(
                "empty certificate chain".into(),
            ));
        }
        Ok(TlsIdentity { chain, key })
    }

    /// From PEM text: certificates (end entity first) and one private key.
    pub fn from_pem(certs_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        let chain = CertificateDer::pem_slice_iter(certs_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::Pem {
                what: "certificate".into(),
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsConfigError::Pem {
            what: "private key".into(),
            reason: e.to_string(),
        })?;
        Self::new(chain, key)
    }

    /// The agency the end-entity certificate names.
    pub fn agency(&self) -> Result<AgencyId, TlsConfigError> {
        let c = CertInfo::parse(&self.chain[0]).map_err(TlsConfigError::Certificate)?;
        c.agency
            .ok_or_else(|| TlsConfigError::Certificate("names no agency".into()))
    }

    /// SHA-256 of the end-entity certificate's SubjectPublicKeyInfo (the card's pin).
    pub fn spki_sha256(&self) -> Result<Sha256Digest, TlsConfigError> {
        Ok(CertInfo::parse(&self.chain[0])
            .map_err(TlsConfigError::Certificate)?
            .spki)
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// A client certificate the relay refused (for its audit log, test-plan.md 13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The agency the certificate names, if it names one.
    pub agency: Option<AgencyId>,
    /// SHA-256 of the certificate (DER).
    pub cert_sha256: Sha256Digest,
    /// Why (the TLS error).
    pub reason: String,
}

/// Called for every refused client certificate.
#[derive(Clone)]
pub struct RejectHook(pub Arc<dyn Fn(&Rejected) + Send + Sync>);

impl fmt::Debug for RejectHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RejectHook")
    }
}

/// Who is trusted (`protocol.md` §3).
#[derive(Clone, Debug, Default)]
pub struct PeerTrust {
    roots: Option<Arc<RootCertStore>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    agencies: BTreeMap<AgencyId, Vec<Sha256Digest>>,
    revoked: BTreeSet<Sha256Digest>,
    on_reject: Option<RejectHook>,
    require_post_quantum: bool,
}

impl PeerTrust {
    /// Nobody is trusted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds CA certificates (DER) to the bundle.
    pub fn add_ca(&mut self, ca: CertificateDer<'static>) -> Result<&mut Self, TlsConfigError> {
        let roots = Arc::make_mut(
            self.roots
                .get_or_insert_with(|| Arc::new(RootCertStore::empty())),
        );
        roots.add(ca)?;
        Ok(self)
    }

    /// Adds every certificate of a PEM bundle to the CA bundle.
    pub fn add_ca_pem(&mut self, pem: &[u8]) -> Result<&mut Self, TlsConfigError> {
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| TlsConfigError::Pem {
                what: "CA bundle".into(),
                reason: e.to_string(),
            })?;
            self.add_ca(c)?;
            n += 1;
        }
        if n == 0 {
            return Err(TlsConfigError::Pem {
                what: "CA bundle".into(),
                reason: "no certificate".into(),
            });
        }
        Ok(self)
    }

    /// Adds a certificate revocation list (DER or PEM).
    pub fn add_crl(&mut self, crl: &[u8]) -> Result<&mut Self, TlsConfigError> {
        let crl = if crl.starts_with(b"-----") {
            CertificateRevocationListDer::from_pem_slice(crl).map_err(|e| TlsConfigError::Pem {
                what: "CRL".into(),
                reason: e.to_string(),
            })?
        } else {
            CertificateRevocationListDer::from(crl.to_vec())
        };
        self.crls.push(crl);
        Ok(self)
    }

    /// Makes `agency` known, with the SPKI pins of its card (empty: CA chain required).
    pub fn add_agency(&mut self, agency: AgencyId, pins: Vec<Sha256Digest>) -> &mut Self {
        self.agencies.insert(agency, pins);
        self
    }

    /// Refuses every certificate whose SPKI hashes to `spki_sha256` (a revoked TLS key,
    /// `custody.md` §8.3), even one a CA issued or a card pins.
    pub fn revoke_spki(&mut self, spki_sha256: Sha256Digest) -> &mut Self {
        self.revoked.insert(spki_sha256);
        self
    }

    /// The same trust without the refusal hook (re-checking open connections after a reload
    /// must not log them as refused handshakes).
    pub(crate) fn without_hook(&self) -> Self {
        let mut t = self.clone();
        t.on_reject = None;
        t
    }

    /// Calls `hook` for every client certificate the relay refuses (the relay logs them).
    pub fn on_reject(&mut self, hook: impl Fn(&Rejected) + Send + Sync + 'static) -> &mut Self {
        self.on_reject = Some(RejectHook(Arc::new(hook)));
        self
    }

    /// Accept only peers whose handshake negotiates the hybrid post-quantum key exchange
    /// X25519MLKEM768 (`protocol.md` §2): it is then the only group offered, so a peer without
    /// it fails the TLS handshake, and the group a connection reports is checked too.
    pub fn require_post_quantum(&mut self, require: bool) -> &mut Self {
        self.require_post_quantum = require;
        self
    }

    /// Whether [`PeerTrust::require_post_quantum`] is set.
    pub fn requires_post_quantum(&self) -> bool {
        self.require_post_quantum
    }

    /// Whether `agency` is known.
    pub fn knows(&self, agency: &AgencyId) -> bool {
        self.agencies.contains_key(agency)
    }

    fn webpki_client(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsConfigError> {
        let Some(roots) = &self.roots else {
            return Ok(None);
        };
        let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.clone())
                .enforce_revocation_expiration();
        }
        b.build()
            .map(Some)
            .map_err(|e| TlsConfigError::Certificate(e.to_string()))
    }

    fn webpki_server(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<Arc<WebPkiServerVerifier>>, TlsConfigError> {
        let Some(roots) = &self.roots else {
            return Ok(None);
        };
        let mut b = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone());
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.clone())
                .enforce_revocation_expiration();
        }
        b.build()
            .map(Some)
            .map_err(|e| TlsConfigError::Certificate(e.to_string()))
    }

    /// Rules 1 and 2: the agency the certificate names, and whether a pin matched.
    fn check_name_and_pin(&self, cert: &CertInfo) -> Result<(AgencyId, bool), rustls::Error> {
        let agency = cert
            .agency
            .clone()
            .ok_or_else(|| reject(PeerRejection::NoAgencyName))?;
        // Rule 0: a revoked key is refused before anything else, CA-issued or not.
        if self.revoked.iter().any(|r| r.ct_eq(&cert.spki)) {
            return Err(reject(PeerRejection::Revoked(agency)));
        }
        let Some(pins) = self.agencies.get(&agency) else {
            // Not an agency we know: `access_denied` on the wire; the id goes to the log only.
            tracing::info!(%agency, "{}", PeerRejection::UnknownAgency(agency.clone()));
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        if pins.is_empty() {
            return Ok((agency, false));
        }
        // Constant-time comparison of each pin.
        if pins.iter().any(|p| p.ct_eq(&cert.spki)) {
            Ok((agency, true))
        } else {
            Err(reject(PeerRejection::PinMismatch(agency)))
        }
    }
}

/// Why our verifier refused a peer certificate (carried in `CertificateError::Other`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejection {
    /// No `<id>.rogatory.invalid` name, or more than one.
    #[error("certificate names no agency")]
    NoAgencyName,
    /// The agency is not in the trust store.
    #[error("agency {0} is not trusted")]
    UnknownAgency(AgencyId),
    /// The certificate's key is not the one the agency's card pins.
    #[error("certificate key of {0} does not match its card's pin")]
    PinMismatch(AgencyId),
    /// The certificate's key is revoked (`custody.md` §8.3).
    #[error("the TLS key of {0} is revoked")]
    Revoked(AgencyId),
}

fn reject(r: PeerRejection) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

/// What we read from a certificate.
#[derive(Debug)]
struct CertInfo {
    agency: Option<AgencyId>,
    spki: Sha256Digest,
    not_before: i64,
    not_after: i64,
}

impl CertInfo {
    fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::prelude::*;
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("malformed certificate: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        let mut agencies = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n
                    && let Some(id) = d.strip_suffix(NAME_SUFFIX)
                {
                    agencies.push(id.to_owned());
                }
            }
        }
        let agency = match agencies.as_slice() {
            [one] => one.parse::<AgencyId>().ok(),
            _ => None,
        };
        let spki = Sha256Digest(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into());
        Ok(CertInfo {
            agency,
            spki,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    fn check_validity(&self, now: UnixTime) -> Result<(), rustls::Error> {
        let now = now.as_secs() as i64;
        if now < self.not_before {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now > self.not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(())
    }
}

fn bad_encoding(_: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

/// Rule 3 after the chain check: a pinned certificate may stand in for a chain that does not
/// reach the bundle, never for an expired, not-yet-valid or revoked one.
fn decide(
    chain: Result<(), rustls::Error>,
    pinned: bool,
    info: &CertInfo,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    match chain {
        Ok(()) => Ok(()),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) if pinned => {
            info.check_validity(now)
        }
        Err(e) => Err(e),
    }
}

/// The authenticated identity of the peer of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The agency its certificate names (checked by the verifier).
    pub agency: AgencyId,
    /// SHA-256 of its certificate's SPKI.
    pub spki_sha256: Sha256Digest,
    /// SHA-256 of its end-entity certificate (DER), for audit entries.
    pub cert_sha256: Sha256Digest,
}

impl PeerIdentity {
    /// Reads the identity from the peer's certificate chain (after the verifier accepted it).
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let first = chain.first()?;
        let info = CertInfo::parse(first).ok()?;
        Some(PeerIdentity {
            agency: info.agency?,
            spki_sha256: info.spki,
            cert_sha256: Sha256Digest(Sha256::digest(first.as_ref()).into()),
        })
    }
}

/// The handshake-signature methods both verifiers share: TLS 1.3 signatures checked with the
/// provider's algorithms; TLS 1.2 is not enabled, so its method is never reached.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// The relay's client-certificate verifier (mandatory client auth).
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    trust: PeerTrust,
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    algs: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl ClientVerifier {
    pub(crate) fn new(
        trust: PeerTrust,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsConfigError> {
        let webpki = trust.webpki_client(provider)?;
        let hints = webpki
            .as_ref()
            .map(|w| w.root_hint_subjects().to_vec())
            .unwrap_or_default();
        Ok(ClientVerifier {
            trust,
            webpki,
            algs: provider.signature_verification_algorithms,
            hints,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = (|| {
            let info = CertInfo::parse(end_entity).map_err(bad_encoding)?;
            let (_, pinned) = self.trust.check_name_and_pin(&info)?;
            let chain = match &self.webpki {
                Some(w) => w
                    .verify_client_cert(end_entity, intermediates, now)
                    .map(|_| ()),
                None => Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
            };
            decide(chain, pinned, &info, now)
        })();
        if let (Err(e), Some(hook)) = (&verdict, &self.trust.on_reject) {
            let agency = CertInfo::parse(end_entity).ok().and_then(|i| i.agency);
            (hook.0)(&Rejected {
                agency,
                cert_sha256: Sha256Digest(Sha256::digest(end_entity.as_ref()).into()),
                reason: e.to_string(),
            });
        }
        verdict.map(|()| ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The client's server-certificate verifier. It ignores the name the client dialled (a
/// `HOST:PORT` says nothing about an agency) and applies the same rules as the relay, plus,
/// when set, that the relay is the expected agency.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    trust: PeerTrust,
    expect: Option<AgencyId>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerVerifier {
    pub(crate) fn new(
        trust: PeerTrust,
        expect: Option<AgencyId>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsConfigError> {
        let webpki = trust.webpki_server(provider)?;
        Ok(ServerVerifier {
            trust,
            expect,
            webpki,
            algs: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let info = CertInfo::parse(end_entity).map_err(bad_encoding)?;
        let (agency, pinned) = self.trust.check_name_and_pin(&info)?;
        if self.expect.as_ref().is_some_and(|e| *e != agency) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        let chain = match &self.webpki {
            Some(w) => {
                let name = ServerName::try_from(agency_dns_name(&agency)).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                })?;
                w.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
                    .map(|_| ())
            }
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        decide(chain, pinned, &info, now)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
