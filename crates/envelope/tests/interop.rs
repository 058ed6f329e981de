//! Interop with the `age` crate (rage's library): what we write it reads, and the reverse,
//! binary and armored, for the size boundaries of STREAM and several recipients.

use std::io::{Read, Write};

use age::armor::{ArmoredReader as AgeArmoredReader, ArmoredWriter as AgeArmoredWriter, Format};
use rand::RngCore;
use rogatory_envelope::{ArmoredWriter, Decryptor, Encryptor, Identity, Recipient};

const SIZES: &[usize] = &[0, 1, 65_535, 65_536, 65_537, 5 * 1024 * 1024];

fn plaintext(n: usize) -> Vec<u8> {
    let mut p = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut p);
    p
}

struct Keys {
    ours: Vec<Identity>,
    theirs: Vec<age::x25519::Identity>,
}

/// Three key pairs, each known to both implementations through its text form.
fn keys() -> Keys {
    let theirs: Vec<age::x25519::Identity> =
        (0..3).map(|_| age::x25519::Identity::generate()).collect();
    let ours = theirs
        .iter()
        .map(|t| {
            use age::secrecy::ExposeSecret;
            t.to_string()
                .expose_secret()
                .parse()
                .expect("age identity parses")
        })
        .collect();
    Keys { ours, theirs }
}

fn ours_encrypt(recipients: &[Recipient], plain: &[u8], armor: bool) -> Vec<u8> {
    let enc = Encryptor::new(recipients).expect("recipients");
    if armor {
        let mut w = enc
            .wrap_output(ArmoredWriter::new(Vec::new()))
            .expect("header");
        w.write_all(plain).expect("write");
        w.finish().expect("finish").finish().expect("armor")
    } else {
        let mut w = enc.wrap_output(Vec::new()).expect("header");
        w.write_all(plain).expect("write");
        w.finish().expect("finish")
    }
}

fn ours_decrypt(file: &[u8], ids: &[Identity]) -> Vec<u8> {
    let mut out = Vec::new();
    Decryptor::new_detect(file)
        .expect("header")
        .decrypt(ids)
        .expect("unwrap")
        .read_to_end(&mut out)
        .expect("payload");
    out
}

fn age_encrypt(recipients: &[age::x25519::Recipient], plain: &[u8], armor: bool) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .expect("recipients");
    let format = if armor {
        Format::AsciiArmor
    } else {
        Format::Binary
    };
    let mut w = enc
        .wrap_output(AgeArmoredWriter::wrap_output(Vec::new(), format).expect("armor"))
        .expect("header");
    w.write_all(plain).expect("write");
    w.finish().expect("finish").finish().expect("armor finish")
}

fn age_decrypt(file: &[u8], id: &age::x25519::Identity) -> Vec<u8> {
    let d = age::Decryptor::new(AgeArmoredReader::new(file)).expect("header");
    let mut out = Vec::new();
    d.decrypt(std::iter::once(id as &dyn age::Identity))
        .expect("unwrap")
        .read_to_end(&mut out)
        .expect("payload");
    out
}

#[test]
fn ours_to_age_crate() {
    let k = keys();
    let recipients: Vec<Recipient> = k.ours.iter().map(Identity::to_public).collect();
    for &n in SIZES {
        let plain = plaintext(n);
        for armor in [false, true] {
            let file = ours_encrypt(&recipients, &plain, armor);
            // Every recipient can read it with the other implementation.
            for id in &k.theirs {
                assert_eq!(age_decrypt(&file, id), plain, "n={n} armor={armor}");
            }
        }
    }
}

#[test]
fn age_crate_to_ours() {
    let k = keys();
    let recipients: Vec<age::x25519::Recipient> = k
        .theirs
        .iter()
        .map(age::x25519::Identity::to_public)
        .collect();
    for &n in SIZES {
        let plain = plaintext(n);
        for armor in [false, true] {
            let file = age_encrypt(&recipients, &plain, armor);
            for id in &k.ours {
                assert_eq!(
                    ours_decrypt(&file, std::slice::from_ref(id)),
                    plain,
                    "n={n} armor={armor}"
                );
            }
        }
    }
}

#[test]
fn key_strings_are_the_same_in_both() {
    let k = keys();
    for (ours, theirs) in k.ours.iter().zip(&k.theirs) {
        assert_eq!(ours.to_public().to_string(), theirs.to_public().to_string());
    }
}
