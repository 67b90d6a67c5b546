//! The agent under a service manager. SIGHUP (`systemctl reload`, a
//! closing terminal) used to kill it; it does not reload either, so it
//! says so and runs on. The units in `deploy/` are checked by the hub's
//! `packaging` tests.

use support::*;

use crate::support;

#[test]
fn sighup_is_logged_and_the_agent_runs_on() {
    let mc = Mc::new("sighup");
    mc.append(&line("12:00:00", "INFO", "before"));
    let agent = Agent::start(mc.write_config("", ""));
    let client = agent.client();
    let tap = stream_logs(&client, 0);
    assert_eq!(tap.take(1)[0].get_message(), "before");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for("the SIGHUP line", WAIT, || (!agent.log_lines(&["SIGHUP", "restart"]).is_empty()).then_some(()));
    agent.assert_answers(&client);
    mc.append(&line("12:00:01", "INFO", "after"));
    assert_eq!(tap.take(1)[0].get_message(), "after", "the stream goes on");
    agent.stop();
}
