//! `agency card` prints what a partner needs: the signed card, which `trust add` accepts as is
//! (`rogatory agency card > mine.card`); `--json` gives its parsed body (issue 12).

mod common;

use common::*;

#[test]
fn the_printed_card_is_the_one_a_partner_trusts() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "A", "agency-a", false);
    agency(d, "B", "agency-b", false);
    let card = ok(run(d, &["--home", "A", "agency", "card"])).stdout;
    assert_eq!(
        card,
        std::fs::read(d.join("A/card.note")).expect("card.note"),
        "the signed card, byte for byte"
    );
    std::fs::write(d.join("mine.card"), &card).expect("write");
    let fp = fingerprint(d, "A");
    ok(run(
        d,
        &[
            "--home",
            "B",
            "trust",
            "add",
            "mine.card",
            "--fingerprint",
            &fp,
        ],
    ));
    let o = ok(run(d, &["--home", "A", "--json", "agency", "card"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(v["type"], "card");
    assert_eq!(v["card"]["id"], "agency-a");
    assert_eq!(v["fingerprint"], fp.as_str());
}
