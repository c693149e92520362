//! The reconcile logic as a pure function: what one agent does next with one DataUpload or
//! DataDownload, from what it observes of the object, of its mover pod and of its own jobs.
//! No I/O here (`crate::agent` carries the actions out), so every case is a unit test.
//!
//! The protocol (Velero's, for a third-party mover; who may do what):
//! - `New` (or no phase): any agent accepts with an exclusive patch (a 409 means another
//!   node won). A cancel before anyone accepted: any agent marks it `Canceled`.
//! - `Accepted`: the accepting agent exposes the snapshot (objects labelled with the
//!   object's uid) and waits for the mover pod; the agent of the node where the pod runs
//!   marks it `Prepared` with `node` = itself. The accepting agent fails it when the pod does
//!   not run within the preparation timeout or fails.
//! - `Prepared`/`InProgress` belong to the agent named in `status.node`: it starts the job
//!   (`InProgress`), and after a restart resumes it, up to `MAX_ATTEMPTS` starts.
//! - `cancel` in any non-terminal phase: the owner (the accepting agent before `Prepared`,
//!   the node's agent after) stops its job, removes what was created and ends `Canceled`.
//! - Terminal phases are never changed; what was left of them is removed by the owner.

use std::time::Duration;

use crate::types::Phase;

/// Starts of one job (the first and the resumptions after restarts) before it fails: a job
/// that keeps killing the agent must not keep a node busy forever.
pub const MAX_ATTEMPTS: u32 = 3;

/// The mover pod as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mover {
    Absent,
    /// Created, not running yet (unscheduled, pulling, waiting for its volume).
    Pending,
    Running {
        node: String,
    },
    /// Failed, succeeded (it must not end) or being deleted.
    Broken(String),
}

/// This agent's own job for the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// No job here, and no record of one.
    None,
    /// A job of this process is running.
    Running,
    /// A job of this process ended; its terminal status is being written.
    Finished,
    /// The job store has a job that is not running: the agent restarted under it.
    Interrupted { attempts: u32 },
}

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// This agent's node.
    pub node: &'a str,
    /// `spec.datamover` is ferry's.
    pub ours: bool,
    pub phase: Phase,
    pub cancel: bool,
    pub accepted_by: Option<&'a str>,
    /// `status.node`: where the data path runs.
    pub data_node: Option<&'a str>,
    /// Time since `acceptedTimestamp` (None: unknown).
    pub accepted_for: Option<Duration>,
    /// How long the mover may take to run (`spec.operationTimeout`).
    pub prepare_timeout: Duration,
    pub mover: Mover,
    pub local: Local,
    /// Room for one more accepted object on this node (the per-node concurrency limit).
    pub can_accept: bool,
    /// The owning node (the data node, else the accepting one) is no longer a Node of the
    /// cluster: nobody else will ever end the object.
    pub owner_gone: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not ours, or nothing to do for this agent now.
    Skip,
    /// Wait for something outside (the pod to run, another node, a running job).
    Wait,
    /// Exclusive patch to `Accepted`.
    Accept,
    /// Create the snapshot's PVC and the mover pod (idempotent).
    Expose,
    /// `Prepared`, with `node` = this node.
    Prepare,
    /// `InProgress` and start the job.
    Start,
    /// Start the job again after a restart (attempt `n`).
    Resume { attempt: u32 },
    /// Stop this process's running job (it then cleans up and ends `Canceled`).
    StopJob,
    /// Remove what was created and end `Canceled`.
    Cancel,
    /// Remove what was created and end `Failed` with this message.
    Fail(String),
    /// Terminal already: remove what this agent's job store still records.
    Forget,
}

/// The next action for `o`.
pub fn decide(o: &Observed) -> Action {
    if !o.ours {
        return Action::Skip;
    }
    let me = Some(o.node);
    if o.phase.is_terminal() {
        return match o.local {
            Local::None | Local::Finished => Action::Skip,
            // A job still running while someone else ended the object (a second agent in
            // a split brain, or an operator): stop it; its end will not change the phase.
            Local::Running => Action::StopJob,
            Local::Interrupted { .. } => Action::Forget,
        };
    }
    // The owner: the data node once there is one, else the accepting node.
    let owner = o.data_node.or(o.accepted_by);
    // Its node was removed from the cluster: any agent ends the object (exclusively).
    if o.owner_gone && owner.is_some_and(|n| n != o.node) && o.phase != Phase::New {
        let node = owner.unwrap_or_default();
        return if o.cancel {
            Action::Cancel
        } else {
            Action::Fail(format!("node {node}, which was moving this volume, is no longer in the cluster"))
        };
    }
    if o.cancel {
        return match (o.phase, o.local) {
            (_, Local::Running) => Action::StopJob,
            (_, Local::Finished) => Action::Wait,
            (Phase::New, _) => Action::Cancel,
            _ if owner == me => Action::Cancel,
            _ => Action::Wait,
        };
    }
    match o.phase {
        Phase::New if o.can_accept => Action::Accept,
        Phase::New => Action::Wait,
        Phase::Accepted => match &o.mover {
            Mover::Running { node } if node == o.node => Action::Prepare,
            _ if o.accepted_by != me => Action::Wait,
            Mover::Broken(why) => Action::Fail(format!("the mover pod failed before it ran: {why}")),
            // Whatever holds it up (a snapshot never ready, a pod never scheduled or started).
            _ if o.accepted_for.is_some_and(|t| t > o.prepare_timeout) => Action::Fail(format!(
                "timeout on preparing the data mover: the volume was not exposed and its pod running within {}s",
                o.prepare_timeout.as_secs()
            )),
            Mover::Absent => Action::Expose,
            Mover::Pending | Mover::Running { .. } => Action::Wait,
        },
        Phase::Prepared | Phase::InProgress if o.data_node != me => Action::Wait,
        Phase::Prepared | Phase::InProgress => match (o.local, &o.mover) {
            (Local::Running | Local::Finished, _) => Action::Wait,
            (_, Mover::Absent) => Action::Fail("the mover pod is gone".into()),
            (_, Mover::Broken(why)) => Action::Fail(format!("the mover pod failed: {why}")),
            (_, Mover::Running { node }) if node != o.node => {
                Action::Fail(format!("the mover pod runs on node {node}, not on {}", o.node))
            }
            (_, Mover::Pending) => Action::Wait,
            (Local::None, _) if o.phase == Phase::Prepared => Action::Start,
            // InProgress with no record here: this agent lost its state (a new host path).
            (Local::None, _) => Action::Resume { attempt: 2 },
            (Local::Interrupted { attempts }, _) if attempts >= MAX_ATTEMPTS => {
                Action::Fail(format!("the agent restarted {attempts} times while moving this volume; giving up"))
            }
            (Local::Interrupted { attempts }, _) => Action::Resume { attempt: attempts + 1 },
        },
        // Canceling without cancel: only this agent writes Canceling, when it stops a job.
        Phase::Canceling if owner == me => match o.local {
            Local::Running | Local::Finished => Action::Wait,
            _ => Action::Cancel,
        },
        Phase::Canceling => Action::Wait,
        Phase::Completed | Phase::Failed | Phase::Canceled => unreachable!("terminal handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Observed<'static> {
        Observed {
            node: "n1",
            ours: true,
            phase: Phase::New,
            cancel: false,
            accepted_by: None,
            data_node: None,
            accepted_for: Some(Duration::from_secs(1)),
            prepare_timeout: Duration::from_secs(600),
            mover: Mover::Absent,
            local: Local::None,
            can_accept: true,
            owner_gone: false,
        }
    }

    fn accepted(by: &'static str) -> Observed<'static> {
        Observed { phase: Phase::Accepted, accepted_by: Some(by), ..base() }
    }

    fn running_on(node: &str) -> Mover {
        Mover::Running { node: node.into() }
    }

    #[test]
    fn another_movers_objects_are_left_alone_in_every_phase() {
        for phase in [Phase::New, Phase::Accepted, Phase::InProgress, Phase::Completed] {
            for cancel in [false, true] {
                let o = Observed { ours: false, phase, cancel, ..base() };
                assert_eq!(decide(&o), Action::Skip, "{phase:?} cancel={cancel}");
            }
        }
    }

    #[test]
    fn a_new_object_is_accepted_only_with_room_on_the_node() {
        assert_eq!(decide(&base()), Action::Accept);
        assert_eq!(decide(&Observed { can_accept: false, ..base() }), Action::Wait);
    }

    #[test]
    fn the_accepting_agent_exposes_and_the_pods_node_prepares() {
        assert_eq!(decide(&accepted("n1")), Action::Expose);
        assert_eq!(decide(&accepted("n2")), Action::Wait, "another node exposes");
        assert_eq!(decide(&Observed { mover: Mover::Pending, ..accepted("n1") }), Action::Wait);
        // The pod runs here, whoever accepted.
        assert_eq!(decide(&Observed { mover: running_on("n1"), ..accepted("n2") }), Action::Prepare);
        // It runs elsewhere: that node's agent prepares it.
        assert_eq!(decide(&Observed { mover: running_on("n2"), ..accepted("n1") }), Action::Wait);
    }

    #[test]
    fn preparation_times_out_or_fails_with_its_pod_for_the_accepting_agent_only() {
        let late = Observed { mover: Mover::Pending, accepted_for: Some(Duration::from_secs(601)), ..accepted("n1") };
        assert!(matches!(decide(&late), Action::Fail(m) if m.contains("600s")));
        // Never exposed (a snapshot that never gets ready): the same timeout.
        let unexposed = Observed { mover: Mover::Absent, ..late.clone() };
        assert!(matches!(decide(&unexposed), Action::Fail(m) if m.contains("600s")));
        assert_eq!(decide(&Observed { accepted_by: Some("n2"), ..late }), Action::Wait);
        let broken = Observed { mover: Mover::Broken("ImagePullBackOff".into()), ..accepted("n1") };
        assert!(matches!(decide(&broken), Action::Fail(m) if m.contains("ImagePullBackOff")));
    }

    #[test]
    fn prepared_starts_on_the_data_node_only() {
        let p = Observed {
            phase: Phase::Prepared,
            accepted_by: Some("n2"),
            data_node: Some("n1"),
            mover: running_on("n1"),
            ..base()
        };
        assert_eq!(decide(&p), Action::Start);
        assert_eq!(decide(&Observed { data_node: Some("n3"), ..p.clone() }), Action::Wait);
        assert_eq!(decide(&Observed { local: Local::Running, ..p.clone() }), Action::Wait);
        assert!(
            matches!(decide(&Observed { mover: Mover::Absent, ..p.clone() }), Action::Fail(m) if m.contains("gone"))
        );
        assert!(matches!(decide(&Observed { mover: running_on("n9"), ..p }), Action::Fail(m) if m.contains("n9")));
    }

    #[test]
    fn an_interrupted_job_resumes_until_it_has_been_started_max_attempts_times() {
        let p = Observed { phase: Phase::InProgress, data_node: Some("n1"), mover: running_on("n1"), ..base() };
        assert_eq!(
            decide(&Observed { local: Local::Interrupted { attempts: 1 }, ..p.clone() }),
            Action::Resume { attempt: 2 }
        );
        let last = Observed { local: Local::Interrupted { attempts: MAX_ATTEMPTS }, ..p.clone() };
        assert!(matches!(decide(&last), Action::Fail(m) if m.contains("restarted")));
        // No record at all (state lost): resume, counted as a second start.
        assert_eq!(decide(&p), Action::Resume { attempt: 2 });
    }

    #[test]
    fn cancel_is_honoured_in_every_non_terminal_phase_by_the_owner() {
        // Nobody accepted: anyone cancels.
        assert_eq!(decide(&Observed { cancel: true, ..base() }), Action::Cancel);
        assert_eq!(decide(&Observed { cancel: true, ..accepted("n1") }), Action::Cancel);
        assert_eq!(decide(&Observed { cancel: true, ..accepted("n2") }), Action::Wait);
        for phase in [Phase::Prepared, Phase::InProgress, Phase::Canceling] {
            let o = Observed { phase, cancel: true, accepted_by: Some("n2"), data_node: Some("n1"), ..base() };
            assert_eq!(decide(&o), Action::Cancel, "{phase:?}");
            assert_eq!(decide(&Observed { local: Local::Running, ..o.clone() }), Action::StopJob, "{phase:?}");
            assert_eq!(decide(&Observed { node: "n2", ..o }), Action::Wait, "{phase:?}: the data node owns it");
        }
        // Canceling left by a restart in the middle of a cancel: finish it.
        let c = Observed { phase: Phase::Canceling, data_node: Some("n1"), ..base() };
        assert_eq!(decide(&c), Action::Cancel);
    }

    #[test]
    fn an_object_whose_node_left_the_cluster_is_ended_by_any_agent() {
        let o = Observed {
            phase: Phase::InProgress,
            accepted_by: Some("n9"),
            data_node: Some("n9"),
            owner_gone: true,
            mover: running_on("n9"),
            ..base()
        };
        assert!(matches!(decide(&o), Action::Fail(m) if m.contains("n9")));
        assert_eq!(decide(&Observed { cancel: true, ..o.clone() }), Action::Cancel);
        assert_eq!(decide(&Observed { phase: Phase::Accepted, data_node: None, ..o.clone() }), decide(&o));
        // Not when the owner is this node (it is obviously here), nor once ended.
        assert_eq!(
            decide(&Observed { node: "n9", mover: running_on("n9"), local: Local::Running, ..o.clone() }),
            Action::Wait
        );
        assert_eq!(decide(&Observed { phase: Phase::Completed, ..o }), Action::Skip);
    }

    #[test]
    fn terminal_objects_are_never_changed() {
        for phase in [Phase::Completed, Phase::Failed, Phase::Canceled] {
            for cancel in [false, true] {
                let o = Observed { phase, cancel, accepted_by: Some("n1"), data_node: Some("n1"), ..base() };
                assert_eq!(decide(&o), Action::Skip);
                assert_eq!(
                    decide(&Observed { local: Local::Interrupted { attempts: 1 }, ..o.clone() }),
                    Action::Forget
                );
                assert_eq!(decide(&Observed { local: Local::Running, ..o }), Action::StopJob);
            }
        }
    }
}
