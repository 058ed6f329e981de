//! test-plan.md 63: a relay admits at most `--max-connections-per-agency` connections of one
//! agency; the next command of that agency waits for a place, says so once, and completes
//! when a place frees, instead of failing.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_command_waits_for_a_place_at_a_busy_relay() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agencies_and_relay_home(d);
    let relay = start_relay_with(d, "B-relay", &["--max-connections-per-agency", "1"]);
    std::fs::create_dir(d.join("case")).expect("mkdir");
    std::fs::write(d.join("case/one.txt"), b"exhibit\n").expect("write");

    // Agency A's one place, held by this test.
    let rt = rogatory_client::runtime().expect("runtime");
    let home = rogatory_client::Home::resolve(Some(&d.join("A"))).expect("home");
    let (node, held) = rt
        .block_on(rogatory_client::connect(&home, &relay.1))
        .expect("the first connection");

    let mut args = vec![
        "--home", "A", "send", "--relay", &relay.1, "--to", "agency-b",
    ];
    args.extend(LEGAL);
    args.push("case");
    let mut send = std::process::Command::new(bin())
        .args(&args)
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("send");
    // Its stderr, line by line: the place is freed once it says it waits.
    let err_pipe = send.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut err = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !err.contains("has no place now") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                err.push_str(&line);
                err.push('\n');
            }
            Err(_) => panic!("send never said it waits for a place: {err}"),
        }
        assert!(
            send.try_wait().expect("try_wait").is_none(),
            "send ended while the relay had no place for it: {err}"
        );
    }
    held.close(rogatory_transport::ErrorCode::NO_ERROR, "done");
    rt.block_on(node.close(rogatory_transport::ErrorCode::NO_ERROR));

    let status = send.wait().expect("wait");
    reader.join().expect("stderr reader");
    err.extend(rx.try_iter().map(|l| l + "\n"));
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("has no place now").count(),
        1,
        "said once that it waits: {err}"
    );
    assert!(
        err.contains("agency-a already holds as many connections to this relay as it may (1)"),
        "{err}"
    );
}
