//! Header tampering and limits (test-plan.md cases 7 and 12).

use std::io::{Read, Write};

use rogatory_envelope::{
    DecryptError, Decryptor, Encryptor, Header, HeaderError, Identity, MAX_HEADER_LEN,
};

fn encrypt(recipients: &[&Identity], plain: &[u8]) -> (Vec<u8>, usize) {
    let rs: Vec<_> = recipients.iter().map(|i| i.to_public()).collect();
    let enc = Encryptor::new(&rs).expect("recipients");
    let header_len = enc.header().encode().len();
    let mut w = enc.wrap_output(Vec::new()).expect("header");
    w.write_all(plain).expect("write");
    (w.finish().expect("finish"), header_len)
}

fn decrypt(file: &[u8], ids: &[Identity]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    Decryptor::new(file)
        .and_then(|d| d.decrypt(ids))
        .map_err(|e| format!("{e:?}"))?
        .read_to_end(&mut out)
        .map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

/// Flipping the low bit of any header byte never yields success; the result is a header
/// failure, an HMAC failure, or no match.
#[test]
fn header_bit_flips_never_succeed() {
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    for n in [1usize, 3] {
        let refs: Vec<&Identity> = ids.iter().take(n).collect();
        let (file, header_len) = encrypt(&refs, b"exhibit");
        for i in 0..header_len {
            let mut bad = file.clone();
            bad[i] ^= 1;
            let got = Decryptor::new(&bad[..]).and_then(|d| d.unwrap_file_key(&ids));
            match got {
                Err(DecryptError::Header(_) | DecryptError::HeaderMac | DecryptError::NoMatch) => {}
                Err(other) => panic!("{n} recipients, byte {i}: unexpected class {other:?}"),
                Ok(_) => panic!("{n} recipients, byte {i}: flipped header accepted"),
            }
        }
    }
}

#[test]
fn grease_added_stanza_deleted_or_version_changed_are_refused() {
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let refs: Vec<&Identity> = ids.iter().collect();
    let (file, _) = encrypt(&refs, b"exhibit");
    let text = String::from_utf8_lossy(&file).into_owned();
    let first_stanza = text.find("-> ").expect("stanza");
    // An extra grease stanza without re-MACing.
    let mut greased = file.clone();
    greased.splice(
        first_stanza..first_stanza,
        b"-> grease x\n\n".iter().copied(),
    );
    assert!(matches!(
        Decryptor::new(&greased[..]).and_then(|d| d.unwrap_file_key(&ids)),
        Err(DecryptError::HeaderMac)
    ));
    // Delete the first stanza (its line and its one body line).
    let second = first_stanza + text[first_stanza + 3..].find("-> ").expect("second") + 3;
    let mut deleted = file.clone();
    deleted.drain(first_stanza..second);
    assert!(matches!(
        Decryptor::new(&deleted[..]).and_then(|d| d.unwrap_file_key(&ids)),
        Err(DecryptError::HeaderMac)
    ));
    // Version v2.
    let mut v2 = file.clone();
    v2[19] = b'2';
    assert!(matches!(
        Decryptor::new(&v2[..]),
        Err(DecryptError::Header(HeaderError::UnsupportedVersion))
    ));
    assert_eq!(decrypt(&file, &ids).expect("original decrypts"), b"exhibit");
}

/// Oversized headers are refused after reading at most the 64 KiB limit.
#[test]
fn header_limits_bound_memory_and_input() {
    let mut many = b"age-encryption.org/v1\n".to_vec();
    for _ in 0..10_000 {
        many.extend_from_slice(b"-> X25519 AAAA\n\n");
    }
    let mut long_arg = b"age-encryption.org/v1\n-> x ".to_vec();
    long_arg.extend(std::iter::repeat_n(b'a', 1 << 20));
    long_arg.push(b'\n');
    let mut long_body = b"age-encryption.org/v1\n-> x\n".to_vec();
    long_body.extend(std::iter::repeat_n(b'A', 65));
    long_body.push(b'\n');
    let mut no_mac = b"age-encryption.org/v1\n-> x\n".to_vec();
    for _ in 0..(MAX_HEADER_LEN / 65 + 10) {
        no_mac.extend(std::iter::repeat_n(b'A', 64));
        no_mac.push(b'\n');
    }
    let zeros = vec![0u8; 10 << 20];
    for (name, input) in [
        ("10 000 stanzas", &many),
        ("1 MiB argument", &long_arg),
        ("65-column body line", &long_body),
        ("no MAC line within 64 KiB", &no_mac),
        ("10 MiB of zeros", &zeros),
    ] {
        let mut r = &input[..];
        let err = Header::read(&mut r).expect_err(name);
        assert!(matches!(err, DecryptError::Header(_)), "{name}: {err:?}");
        let consumed = input.len() - r.len();
        assert!(consumed <= MAX_HEADER_LEN, "{name}: read {consumed} bytes");
    }
}
