//! Header tampering, limits, and parts moved between files (test-plan.md cases 5, 6, 7 and 12).

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

/// test-plan.md cases 5 and 6: two files encrypted to the same recipient, three chunks each.
/// Whatever is moved between them or within one (a chunk, the header, the payload nonce, two
/// chunks swapped) fails to decrypt: each file has its own file key and nonce, and each chunk's
/// nonce is its index.
#[test]
fn chunks_headers_and_nonces_moved_between_files_are_refused() {
    const CHUNK: usize = 64 * 1024 + 16;
    let id = Identity::generate();
    let plain = |seed: u8| -> Vec<u8> {
        (0..2 * 64 * 1024 + 500)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    };
    let ((a, ha), (b, hb)) = (encrypt(&[&id], &plain(3)), encrypt(&[&id], &plain(7)));
    assert_eq!(decrypt(&a, std::slice::from_ref(&id)), Ok(plain(3)));
    assert_eq!(decrypt(&b, std::slice::from_ref(&id)), Ok(plain(7)));
    // Offsets of chunk i of a file whose payload starts at `p` (after header and nonce).
    let chunk = |f: &[u8], p: usize, i: usize| p + i * CHUNK..(p + (i + 1) * CHUNK).min(f.len());
    let (pa, pb) = (ha + 16, hb + 16);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Chunk 1 of b in place of chunk 1 of a (the same length and index).
    let mut f = a.clone();
    f[chunk(&a, pa, 1)].copy_from_slice(&b[chunk(&b, pb, 1)]);
    cases.push(("chunk from another file", f));
    // a's header with b's nonce and payload, and b's header with a's.
    cases.push(("header of a, rest of b", [&a[..ha], &b[hb..]].concat()));
    cases.push(("header of b, rest of a", [&b[..hb], &a[ha..]].concat()));
    // a's header and payload with b's payload nonce.
    cases.push((
        "nonce of another file",
        [&a[..ha], &b[hb..pb], &a[pa..]].concat(),
    ));
    // Chunks 0 and 1 of a swapped (both full).
    let mut f = a.clone();
    f[chunk(&a, pa, 0)].copy_from_slice(&a[chunk(&a, pa, 1)]);
    f[chunk(&a, pa, 1)].copy_from_slice(&a[chunk(&a, pa, 0)]);
    cases.push(("chunks swapped", f));
    // b's last chunk in place of a's (both short, the same length): authenticated as last,
    // but under the other file's key.
    let mut f = a.clone();
    f[chunk(&a, pa, 2)].copy_from_slice(&b[chunk(&b, pb, 2)]);
    cases.push(("last chunk from another file", f));
    for (what, f) in cases {
        assert_eq!(f.len(), a.len(), "{what}: the same length");
        assert!(
            decrypt(&f, std::slice::from_ref(&id)).is_err(),
            "{what}: decrypted"
        );
    }
}
