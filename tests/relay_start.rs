//! `relay serve` refuses to start, with a local exit code, when it cannot work: a busy port
//! (exit 7), an address this machine does not have (exit 2), a damaged index (exit 7, checked at
//! start rather than answered later as a retryable error). Issue 12.

mod common;

use common::*;

fn serve(d: &std::path::Path, listen: &str) -> std::process::Output {
    serve_refused(d, "B", listen)
}

#[test]
fn a_busy_port_or_a_foreign_address_is_a_local_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    // QUIC listens on UDP: hold the port with a UDP socket.
    let held = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let o = serve(d, &addr);
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    // 192.0.2.1 (TEST-NET-1) is nobody's address.
    let o = serve(d, "192.0.2.1:4433");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no such address"), "{}", stderr(&o));
}

#[test]
fn a_damaged_index_stops_the_relay_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    // A first start creates the index; then one of its pages is overwritten.
    drop(start_relay(d, "B"));
    let db = d.join("B/relay/relay.db");
    {
        let c = rusqlite::Connection::open(&db).expect("db");
        c.execute_batch(
            "CREATE TABLE filler (x BLOB); INSERT INTO filler VALUES (zeroblob(20000));
             CREATE INDEX filler_x ON filler (x); PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("filler");
    }
    let mut bytes = std::fs::read(&db).expect("read");
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() > 4 * page, "the index spans several pages");
    // The b-tree page after the schema page: its header and cell pointers become garbage.
    for b in &mut bytes[page..page + 64] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).expect("write");
    let o = serve(d, "127.0.0.1:0");
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
}
