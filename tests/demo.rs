//! `usersync demo --once` as a user runs it: the real binary, its output and exit code.

use std::process::Command;

#[test]
fn the_demo_remaps_outreach_user_1_and_exits_0() {
    let output = Command::new(env!("CARGO_BIN_EXE_usersync"))
        .args(["demo", "--once"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    let conflict = stdout
        .find("decision: conflict")
        .expect("Y's conflict is printed");
    let remap = stdout
        .find("decision: remap")
        .expect("the remap is printed");
    assert!(
        conflict < remap,
        "the conflict comes before the remap:\n{stdout}"
    );
    assert!(
        stdout.contains("Outreach user 1 ↔ Salesforce user Y"),
        "the final mapping names Y:\n{stdout}"
    );
    assert!(stdout.contains("Admin: http://127.0.0.1:"), "{stdout}");
    assert!(
        !stdout.contains("decision: create"),
        "no Outreach user is created:\n{stdout}"
    );
}
