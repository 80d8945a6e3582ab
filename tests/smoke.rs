mod common;
use common::Server;

#[test]
fn module_loads_and_acquires() {
    let server = Server::new();
    let mut con = server.conn();
    let token: Option<i64> = redis::cmd("SPACELOCK.ACQUIRE")
        .arg("k")
        .arg("me")
        .arg(1000)
        .query(&mut con)
        .unwrap();
    assert_eq!(token, Some(1));
}
