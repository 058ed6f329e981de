//! Certificates for agencies (`protocol.md` §3.1): a CA for a deployment, agency certificates
//! that name `<agency id>.rogatory.invalid`, self-signed certificates for pinned deployments,
//! and CRLs. ECDSA P-256 keys (rcgen over aws-lc-rs).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rogatory_custody::AgencyId;
use time::{Duration, OffsetDateTime};

use crate::tls::agency_dns_name;

/// A certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CertError(String);

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError(e.to_string())
    }
}

/// A validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) for `days` days.
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM (secret: write it with mode 0600).
    pub key_pem: String,
}

/// A certificate authority for a deployment.
#[derive(Debug)]
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    /// A new CA named `name`.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, CertError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: Issuer::new(p, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM): what peers put in their CA bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM, secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `agency` with a new key.
    pub fn issue(
        &self,
        agency: &AgencyId,
        validity: Validity,
        serial: u64,
    ) -> Result<CertKey, CertError> {
        let key = KeyPair::generate()?;
        let cert = agency_params(agency, validity, serial)?.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for `agency` for an existing key (PEM).
    pub fn issue_for_key(
        &self,
        agency: &AgencyId,
        key_pem: &str,
        validity: Validity,
        serial: u64,
    ) -> Result<String, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(agency_params(agency, validity, serial)?
            .signed_by(&key, &self.issuer)?
            .pem())
    }

    /// A CRL (PEM) revoking `serials`, valid from `this_update` to `next_update`.
    pub fn crl(
        &self,
        serials: &[u64],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, CertError> {
        let p = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(this_update.unix_timestamp().max(1) as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: this_update,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(p.signed_by(&self.issuer)?.pem()?)
    }
}

fn agency_params(
    agency: &AgencyId,
    validity: Validity,
    serial: u64,
) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(vec![agency_dns_name(agency)])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agency.as_str());
    p.distinguished_name = dn;
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(SerialNumber::from(serial));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // The same certificate serves as client (sender, recipient) and server (relay).
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok(p)
}

/// A self-signed certificate for `agency` with a new key, for deployments that pin SPKIs in
/// agency cards instead of running a CA.
pub fn self_signed(agency: &AgencyId, validity: Validity) -> Result<CertKey, CertError> {
    let key = KeyPair::generate()?;
    let p = agency_params(agency, validity, 1)?;
    let cert = p.self_signed(&key)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A self-signed certificate for `agency` over an existing key (PEM).
pub fn self_signed_for_key(
    agency: &AgencyId,
    key_pem: &str,
    validity: Validity,
) -> Result<String, CertError> {
    let key = KeyPair::from_pem(key_pem)?;
    Ok(agency_params(agency, validity, 1)?.self_signed(&key)?.pem())
}
