//! The C2SP CCTV age vectors (`tests/cctv-age/`, 0BSD/CC0/Unlicense, see its README): one test
//! per vector, a strict reader, and a summary that prints how many of each kind ran.
//!
//! The X25519 and hybrid post-quantum (`mlkem768x25519`) vectors must give exactly their
//! expected result. The one deliberate deviation, with its reason (`docs/envelope.md` §5.2):
//! scrypt vectors: passphrase encryption is not supported. A lone scrypt stanza is refused as
//! "unsupported" without parsing its work factor; scrypt mixed with other stanzas is still the
//! header failure the spec requires (`scrypt_and_x25519`).

mod cctv_support;

use cctv_support::run_vector;

macro_rules! vectors {
    ($($name:ident)*) => {
        /// Every vector file, as listed in the data directory.
        const ALL: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run_vector(stringify!($name)).map(|_| ()).unwrap_or_else(|e| panic!("{e}"));
            }
        )*
    };
}

vectors! { armor_crlf armor_empty armor_empty_last_line armor_empty_line_begin armor_empty_line_end armor_eol_between_padding armor_full_last_line armor_garbage_encoded armor_garbage_leading armor_garbage_trailing armor_header_crlf armor_headers armor_hybrid armor_invalid_character_header armor_invalid_character_payload armor_long_line armor_lowercase armor_no_end_line armor_no_eol armor_no_match armor_no_padding armor_not_canonical armor_pgp_checksum armor_scrypt armor_short_line armor_whitespace_begin armor_whitespace_end armor_whitespace_eol armor_whitespace_last_line armor_whitespace_line_start armor_whitespace_outside armor_wrong_type armor_x25519 empty header_crlf hmac_bad hmac_extra_space hmac_garbage hmac_missing hmac_no_space hmac_not_canonical hmac_trailing_space hmac_truncated hybrid hybrid_and_x25519 hybrid_bad_tag hybrid_currupted_enc_mlkem hybrid_currupted_enc_x25519 hybrid_extra_argument hybrid_grease hybrid_identity hybrid_long_file_key hybrid_long_share hybrid_low_order hybrid_multiple_recipients hybrid_no_match hybrid_not_canonical_body hybrid_not_canonical_enc hybrid_short_share hybrid_uppercase hybrid_x25519_arg scrypt scrypt_and_x25519 scrypt_bad_tag scrypt_double scrypt_extra_argument scrypt_long_file_key scrypt_no_match scrypt_not_canonical_body scrypt_not_canonical_salt scrypt_salt_long scrypt_salt_missing scrypt_salt_short scrypt_uppercase scrypt_work_factor_23 scrypt_work_factor_hex scrypt_work_factor_leading_garbage scrypt_work_factor_leading_plus scrypt_work_factor_leading_zero_decimal scrypt_work_factor_leading_zero_octal scrypt_work_factor_missing scrypt_work_factor_negative scrypt_work_factor_overflow scrypt_work_factor_trailing_garbage scrypt_work_factor_wrong scrypt_work_factor_zero stanza_bad_start stanza_base64_padding stanza_empty_argument stanza_empty_body stanza_empty_last_line stanza_invalid_character stanza_long_line stanza_missing_body stanza_missing_final_line stanza_multiple_short_lines stanza_no_arguments stanza_not_canonical stanza_spurious_cr stanza_valid_characters stream_257_chunks stream_257_chunks_full stream_258_chunks stream_bad_tag stream_bad_tag_second_chunk stream_bad_tag_second_chunk_full stream_empty_payload stream_last_chunk_empty stream_last_chunk_full stream_last_chunk_full_second stream_missing_tag stream_no_chunks stream_no_final stream_no_final_full stream_no_final_two_chunks stream_no_final_two_chunks_full stream_no_nonce stream_short_chunk stream_short_nonce stream_short_second_chunk stream_three_chunks stream_trailing_garbage_long stream_trailing_garbage_short stream_two_chunks stream_two_final_chunks stream_two_final_chunks_full stream_two_final_chunks_second stream_two_final_chunks_short version_unsupported x25519 x25519_bad_tag x25519_extra_argument x25519_grease x25519_identity x25519_long_file_key x25519_long_share x25519_low_order x25519_lowercase x25519_multiple_recipients x25519_no_match x25519_not_canonical_body x25519_not_canonical_share x25519_short_share  }

#[test]
fn summary_every_file_listed_and_counts_printed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(cctv_support::dir())
        .expect("test data directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every vector file has its own test");
    assert_eq!(ALL.len(), 143);

    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for name in ALL {
        let kind = run_vector(name).unwrap_or_else(|e| panic!("{e}"));
        *counts.entry(kind).or_default() += 1;
    }
    println!("CCTV age vectors run: {}", ALL.len());
    for (kind, n) in &counts {
        println!("  {n:4}  {kind}");
    }
    assert_eq!(counts.values().sum::<usize>(), 143);
    // Every X25519 and every hybrid vector gave exactly its expected result.
    let exact = |family: &str| {
        counts
            .iter()
            .filter(|(k, _)| k.starts_with(family) && k.ends_with("as expected"))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let refused = counts
        .iter()
        .filter(|(k, _)| !k.starts_with("scrypt") && !k.ends_with("as expected"))
        .count();
    assert_eq!(refused, 0, "only scrypt vectors may be refused");
    assert_eq!(exact("mlkem768x25519"), 19, "19 hybrid vectors");
    assert_eq!(exact("x25519 "), 98, "98 X25519 vectors");
}
