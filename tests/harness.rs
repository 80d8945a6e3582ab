//! Checks on the test harness itself: the port picker that every
//! integration test depends on, how a start that lost its port is told
//! apart from one the server refused, and the window by which race tests
//! judge whether their arrivals met inside a slow command.

use spacelock_testkit as kit;

use std::collections::HashSet;

/// Ports come from below the kernel's ephemeral range (where the suite's
/// outgoing connections take their local ports), are bindable, and do not
/// repeat within a process.
#[kit::test]
fn free_ports_avoid_the_ephemeral_range_and_do_not_repeat() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let lo: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let p = kit::free_port();
        assert!(
            p < lo || lo <= 12_000,
            "port {p} is in the ephemeral range (from {lo})"
        );
        assert!(seen.insert(p), "port {p} handed out twice");
    }
}

/// A cluster node gets its own bus port, and keeps it across a restart.
#[kit::test]
fn cluster_nodes_keep_their_bus_port_on_restart() {
    let node = kit::ServerBuilder::new().cluster().start();
    let bus = node.bus_port.expect("bus port");
    assert_ne!(bus, node.port);
    let info: String = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-port")
        .query::<Vec<String>>(&mut node.conn())
        .unwrap()
        .join(" ");
    assert!(info.ends_with(&bus.to_string()), "{info}");
    let node = node.restart_with(|b| b);
    assert_eq!(node.bus_port, Some(bus));
}

/// An arrival counts as inside a slow command only where every placement
/// of the command between its sending and its reply covers it, and the
/// loop's length follows the server time it measured, four times at most
/// per step.
#[kit::test]
fn a_busy_window_holds_only_arrivals_surely_inside_the_slow_command() {
    // Sent at 0, replied at 500 ms, ran 400 ms: it began within the first
    // 100 ms and ended by 400 ms at the earliest.
    let w = kit::BusyWindow {
        sent_us: 0,
        replied_us: 500_000,
        ran_us: 400_000,
    };
    for (at, inside) in [
        (50_000, false),
        (99_000, false),
        (110_000, true),
        (250_000, true),
        (390_000, true),
        (395_000, false),
        (450_000, false),
    ] {
        assert_eq!(w.holds(at), inside, "an arrival at {at} µs ({w})");
    }
    // It ran no longer than its reply took to come: nothing is surely in.
    let short = kit::BusyWindow {
        ran_us: 100_000,
        ..w
    };
    assert!(!(0..500_000).step_by(1_000).any(|at| short.holds(at)));
    assert_eq!(kit::busy_rescaled(1_000, 200_000, 400), 2_000);
    assert_eq!(kit::busy_rescaled(1_000, 10_000, 400), 4_000, "at most 4x");
    assert_eq!(
        kit::busy_rescaled(1_000, 10_000_000, 400),
        250,
        "at least 1/4"
    );
}

/// A server started on a port someone else holds fails, and its log is
/// recognised as a clash: that is what lets a start on a picked port try a
/// fresh one, and a test that expects a refusal never judge a clash's log.
#[kit::test]
fn a_start_on_a_taken_port_is_recognised_as_a_clash() {
    // Held for the whole test (a port the kernel picks, so no one else's).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let log = match kit::ServerBuilder::new().port(port).try_start() {
        Ok(_) => panic!("the server started on a taken port {port}"),
        Err(log) => log,
    };
    assert!(kit::port_clash(&log), "not recognised as a clash:\n{log}");
    // A refusal is not a clash.
    let refused = kit::ServerBuilder::new()
        .module_args(&["token-mode", "sometimes"])
        .try_start()
        .err()
        .expect("an unknown token mode is refused");
    assert!(!kit::port_clash(&refused), "{refused}");
}

kit::main!();
