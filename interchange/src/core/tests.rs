//! The core driven by events through a recording `Comm`: no sockets, no threads.

use super::*;
use crate::dispatch::DispatchConfig;
use fxr_protocol::{BlockId, Registration};
use std::sync::mpsc::channel;

/// Records what the core asked for.
#[derive(Default)]
struct Fake {
    sent: Vec<(u32, InterchangeMsg)>,
    raw: Vec<Vec<u8>>,
    closed: Vec<u32>,
    replies: Vec<(ClientId, FrontMsg)>,
}

impl Comm for Fake {
    fn send(&mut self, pipe: u32, frame: Vec<u8>) {
        // A sealed frame is kept as it went; others decoded.
        match fxr_protocol::decode(&frame) {
            Ok(m) => self.sent.push((pipe, m)),
            Err(_) => self.raw.push(frame),
        }
    }
    fn close_pipe(&mut self, pipe: u32) {
        self.closed.push(pipe);
    }
    fn client_connected(&mut self, _: ClientId, _: Sender<FrontMsg>) {}
    fn client_gone(&mut self, _: ClientId) {}
    fn reply(&mut self, client: ClientId, msg: FrontMsg) {
        self.replies.push((client, msg));
    }
    fn close(&mut self) {}
}

fn core() -> Core<Fake> {
    Core::new(
        CoreSettings {
            secret: "right".into(),
            heartbeat_period: Duration::from_secs(5),
            heartbeat_threshold: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(30),
            workers: WorkerSettings::default(),
            register_timeout: Duration::from_secs(10),
            encrypt: false,
        },
        Sharded::single(DispatchConfig::default()),
        Fake::default(),
        Default::default(),
    )
}

fn register_with(id: u64, proof: fxr_protocol::auth::Proof) -> Vec<u8> {
    fxr_protocol::encode(&ManagerMsg::Register(Registration {
        manager_id: ManagerId(id),
        block_id: BlockId("b".into()),
        rank: 0,
        block_size: 1,
        hostname: "h".into(),
        cores: 1,
        memory_bytes: 0,
        workers: 2,
        prefetch: 0,
        containers: vec![],
        version: "test".into(),
        proof,
        simulated: true,
    }))
    .unwrap()
}

/// Says `Hello` on `pipe` and answers the interchange's challenge as a manager holding
/// `secret` would; returns the registration it sent.
fn register(c: &mut Core<Fake>, pipe: u32, id: u64, secret: &str, now: Instant) -> Vec<u8> {
    use fxr_protocol::auth;
    let mine = [pipe as u8; auth::NONCE];
    let hello = fxr_protocol::encode(&ManagerMsg::Hello { nonce: mine }).unwrap();
    from_pipe(c, pipe, hello, now);
    let Some((_, InterchangeMsg::Challenge { nonce, proof, .. })) = c.comm.sent.pop() else {
        panic!("a challenge");
    };
    assert!(
        auth::same(&proof, &auth::interchange_proof("right", &mine, &nonce)),
        "the interchange proves the secret"
    );
    assert_ne!(nonce, [0; auth::NONCE]);
    let reg = register_with(id, auth::manager_proof(secret, &nonce, &mine));
    from_pipe(c, pipe, reg.clone(), now);
    reg
}

/// What a manager on `pipe` sent.
fn from_pipe(c: &mut Core<Fake>, pipe: u32, body: Vec<u8>, now: Instant) {
    feed(
        c,
        Event::FromPipe {
            pipe_id: pipe,
            body,
        },
        now,
    );
}

fn feed(c: &mut Core<Fake>, ev: Event, now: Instant) {
    let mut out = Outbox::default();
    c.handle(ev, now, &mut out);
    c.flush(&mut out);
}

#[test]
fn the_right_secret_registers_and_is_welcomed() {
    let mut c = core();
    let now = Instant::now();
    register(&mut c, 7, 1, "right", now);
    assert!(matches!(
        c.comm.sent.as_slice(),
        [(7, InterchangeMsg::Welcome { .. })]
    ));
    assert_eq!(c.status(now).managers.len(), 1);
    assert!(c.comm.closed.is_empty());
    // Registered: never closed for being slow to register.
    c.reap_refused(now + Duration::from_secs(60));
    assert!(c.comm.closed.is_empty());
}

#[test]
fn with_encrypt_everything_after_welcome_is_sealed_both_ways() {
    use fxr_protocol::auth;
    let mut c = core();
    c.settings.encrypt = true;
    let now = Instant::now();
    let mine = [4u8; auth::NONCE];
    let hello = fxr_protocol::encode(&ManagerMsg::Hello { nonce: mine }).unwrap();
    from_pipe(&mut c, 4, hello, now);
    let Some((
        _,
        InterchangeMsg::Challenge {
            nonce,
            encrypt: true,
            ..
        },
    )) = c.comm.sent.pop()
    else {
        panic!("a challenge that asks for encryption");
    };
    let reg = register_with(1, auth::manager_proof("right", &nonce, &mine));
    from_pipe(&mut c, 4, reg, now);
    assert!(
        matches!(c.comm.sent.pop(), Some((4, InterchangeMsg::Welcome { .. }))),
        "Welcome in clear"
    );
    let (m2i, i2m) = auth::session_keys("right", &mine, &nonce);
    // A heartbeat sealed with the manager's key is taken; the interchange's next message is
    // sealed with its own.
    let hb = fxr_protocol::encode(&ManagerMsg::Heartbeat {
        capacity: vec![],
        counters: Default::default(),
    })
    .unwrap();
    let mut to_i = auth::Cipher::new(&m2i);
    from_pipe(&mut c, 4, to_i.seal(&hb), now);
    assert!(c.comm.closed.is_empty());
    feed(&mut c, Event::Client(1, ClientMsg::Shutdown), now);
    let raw = c.comm.raw.pop().expect("a drain was sent");
    assert!(
        fxr_protocol::decode::<InterchangeMsg>(&raw).is_err(),
        "not readable in clear"
    );
    let plain = auth::Cipher::new(&i2m).open(&raw).unwrap();
    assert!(matches!(
        fxr_protocol::decode::<InterchangeMsg>(&plain),
        Ok(InterchangeMsg::Drain { .. })
    ));
    // A message in clear (or replayed) after Welcome closes the connection, also when the
    // link had decoded it.
    let decoded = fxr_protocol::decode::<ManagerMsg>(&hb).expect("the heartbeat decodes");
    from_pipe(&mut c, 4, hb, now);
    assert_eq!(c.comm.closed, vec![4]);
    let mut c = core();
    c.settings.encrypt = true;
    from_pipe(
        &mut c,
        5,
        fxr_protocol::encode(&ManagerMsg::Hello { nonce: mine }).expect("a hello encodes"),
        now,
    );
    let Some((_, InterchangeMsg::Challenge { nonce, .. })) = c.comm.sent.pop() else {
        panic!("a challenge");
    };
    from_pipe(
        &mut c,
        5,
        register_with(2, auth::manager_proof("right", &nonce, &mine)),
        now,
    );
    feed(
        &mut c,
        Event::Decoded {
            pipe_id: 5,
            msg: decoded,
        },
        now,
    );
    assert_eq!(c.comm.closed, vec![5]);
}

#[test]
fn messages_decoded_by_the_receiving_thread_register_and_report_like_raw_ones() {
    use fxr_protocol::auth;
    let mut c = core();
    let now = Instant::now();
    let mine = [6u8; auth::NONCE];
    feed(
        &mut c,
        Event::Decoded {
            pipe_id: 6,
            msg: ManagerMsg::Hello { nonce: mine },
        },
        now,
    );
    let Some((6, InterchangeMsg::Challenge { nonce, .. })) = c.comm.sent.pop() else {
        panic!("a challenge");
    };
    let reg = register_with(3, auth::manager_proof("right", &nonce, &mine));
    let msg = fxr_protocol::decode::<ManagerMsg>(&reg).expect("the registration decodes");
    feed(&mut c, Event::Decoded { pipe_id: 6, msg }, now);
    assert!(matches!(
        c.comm.sent.pop(),
        Some((6, InterchangeMsg::Welcome { .. }))
    ));
    assert_eq!(c.status(now).managers.len(), 1);
    assert!(c.comm.closed.is_empty());
}

#[test]
fn a_replayed_registration_or_one_without_hello_is_refused() {
    let mut c = core();
    let now = Instant::now();
    let recorded = register(&mut c, 7, 1, "right", now);
    c.comm.sent.clear();
    // The same bytes on a new connection, after its own Hello: the nonce differs.
    let hello = fxr_protocol::encode(&ManagerMsg::Hello { nonce: [8; 32] }).unwrap();
    from_pipe(&mut c, 8, hello, now);
    from_pipe(&mut c, 8, recorded.clone(), now);
    assert!(matches!(
        c.comm.sent.as_slice(),
        [
            (8, InterchangeMsg::Challenge { .. }),
            (8, InterchangeMsg::Refused { .. })
        ]
    ));
    // Without a Hello at all.
    from_pipe(&mut c, 9, recorded, now);
    assert!(matches!(
        c.comm.sent.last(),
        Some((9, InterchangeMsg::Refused { .. }))
    ));
    assert_eq!(c.status(now).managers.len(), 1);
}

#[test]
fn a_connection_that_never_registers_is_closed_after_the_deadline() {
    let mut c = core();
    let t0 = Instant::now();
    feed(&mut c, Event::PipeOpened(11), t0);
    c.reap_refused(t0 + Duration::from_secs(5));
    assert!(c.comm.closed.is_empty());
    c.reap_refused(t0 + Duration::from_secs(11));
    assert_eq!(c.comm.closed, vec![11]);
}

#[test]
fn a_wrong_secret_is_refused_then_its_pipe_closed() {
    let mut c = core();
    let t0 = Instant::now();
    register(&mut c, 3, 1, "wrong", t0);
    assert!(matches!(
        c.comm.sent.as_slice(),
        [(3, InterchangeMsg::Refused { .. })]
    ));
    assert!(c.status(Instant::now()).managers.is_empty());
    // Anything else it sends is ignored; the pipe closes a moment later, so the refusal
    // itself is delivered first.
    let again = register_with(1, [0; 32]);
    from_pipe(&mut c, 3, again, t0);
    assert!(c.status(Instant::now()).managers.is_empty());
    c.reap_refused(t0 + Duration::from_millis(100));
    assert!(c.comm.closed.is_empty());
    c.reap_refused(t0 + Duration::from_millis(300));
    assert_eq!(c.comm.closed, vec![3]);
}

#[test]
fn a_message_before_registration_or_undecodable_closes_the_pipe() {
    let mut c = core();
    let now = Instant::now();
    let hb = fxr_protocol::encode(&ManagerMsg::Heartbeat {
        capacity: vec![],
        counters: Default::default(),
    })
    .unwrap();
    from_pipe(&mut c, 4, hb.clone(), now);
    from_pipe(&mut c, 5, vec![1, 2, 3], now);
    assert_eq!(c.comm.closed, vec![4, 5]);
    // More already on its way on the closing connection is dropped quietly, not closed (and
    // logged) once per message: at shutdown hundreds of redialling managers did that.
    from_pipe(&mut c, 4, hb, now);
    assert_eq!(c.comm.closed, vec![4, 5]);
    assert!(c.comm.sent.is_empty());
}

#[test]
fn a_manager_registering_again_on_a_new_pipe_closes_the_old_one() {
    let mut c = core();
    let now = Instant::now();
    for pipe in [1, 2] {
        register(&mut c, pipe, 9, "right", now);
    }
    assert_eq!(c.comm.closed, vec![1]);
    assert_eq!(c.status(now).managers.len(), 1);
}

#[test]
fn shutdown_drains_managers_and_refuses_new_work_and_managers() {
    let mut c = core();
    let now = Instant::now();
    register(&mut c, 1, 1, "right", now);
    let (tx, _rx) = channel();
    feed(&mut c, Event::ClientConnected(5, tx), now);
    feed(&mut c, Event::Client(5, ClientMsg::Shutdown), now);
    assert!(matches!(
        c.comm.sent.last(),
        Some((
            1,
            InterchangeMsg::Drain {
                endpoint_stopping: true
            }
        ))
    ));
    assert!(c.status(now).stopping);
    feed(
        &mut c,
        Event::Client(5, ClientMsg::Submit { tasks: vec![] }),
        now,
    );
    assert!(matches!(
        c.comm.replies.last(),
        Some((5, FrontMsg::Error { .. }))
    ));
    register(&mut c, 2, 2, "right", now);
    assert!(matches!(
        c.comm.sent.last(),
        Some((2, InterchangeMsg::Refused { .. }))
    ));
}

#[test]
fn heartbeats_go_only_to_managers_sent_nothing_since_the_last_round() {
    let mut c = core();
    let now = Instant::now();
    register(&mut c, 1, 1, "right", now);
    register(&mut c, 2, 2, "right", now);
    let round = |c: &mut Core<Fake>| -> Vec<u32> {
        c.comm.sent.clear();
        let mut out = Outbox::default();
        c.heartbeats(&mut out);
        c.flush(&mut out);
        let mut to: Vec<u32> = c
            .comm
            .sent
            .iter()
            .filter(|(_, m)| matches!(m, InterchangeMsg::Heartbeat))
            .map(|(p, _)| *p)
            .collect();
        to.sort_unstable();
        to
    };
    assert!(round(&mut c).is_empty(), "both were just welcomed");
    assert_eq!(round(&mut c), vec![1, 2], "nothing sent since");
    assert_eq!(round(&mut c), vec![1, 2], "a heartbeat is not news");
    // One task goes to one of them: only the other needs a heartbeat.
    let (tx, _rx) = channel();
    feed(&mut c, Event::ClientConnected(5, tx), now);
    let task = fxr_protocol::Task {
        id: TaskId(1),
        function: fxr_protocol::Function::Builtin(fxr_protocol::Builtin::Noop),
        args: Vec::new(),
        attempt: 0,
        container: None,
    };
    feed(
        &mut c,
        Event::Client(5, ClientMsg::Submit { tasks: vec![task] }),
        now,
    );
    let mut out = Outbox::default();
    c.dispatcher.dispatch(now, &mut out);
    c.flush(&mut out);
    let got: Vec<u32> = c
        .comm
        .sent
        .iter()
        .filter(|(_, m)| matches!(m, InterchangeMsg::Tasks { .. }))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(got.len(), 1, "{:?}", c.comm.sent);
    let other = if got[0] == 1 { 2 } else { 1 };
    assert_eq!(round(&mut c), vec![other], "{:?}", got);
}

#[test]
fn the_brokers_request_shows_in_status_with_what_is_left_of_it_then_lapses() {
    let mut c = core();
    let now = Instant::now();
    let (tx, _rx) = channel();
    feed(&mut c, Event::ClientConnected(5, tx), now);
    let r = fxr_protocol::ProvisionRequest {
        blocks: 3,
        backlog: 40,
        reason: "40 tasks open for 8 workers".into(),
        valid_ms: 30_000,
    };
    feed(
        &mut c,
        Event::Client(5, ClientMsg::Provision(r.clone())),
        now,
    );
    let held = c.status(now + Duration::from_secs(10)).requested;
    assert_eq!(
        held,
        Some(fxr_protocol::ProvisionRequest {
            valid_ms: 20_000,
            ..r
        })
    );
    assert_eq!(c.status(now + Duration::from_secs(30)).requested, None);
    // Whatever a request says, it holds at most 10 minutes and keeps 1,000 bytes of reason
    // (cut between characters).
    let long = fxr_protocol::ProvisionRequest {
        blocks: 1,
        backlog: 1,
        reason: "é".repeat(5_000),
        valid_ms: u64::MAX,
    };
    feed(&mut c, Event::Client(5, ClientMsg::Provision(long)), now);
    let held = c.status(now).requested.expect("held");
    assert_eq!(held.valid_ms, 600_000);
    assert_eq!(held.reason.len(), 1000);
    assert!(c.status(now + Duration::from_secs(601)).requested.is_none());
}

#[test]
fn the_loop_dispatches_within_a_burst_of_submissions_but_batches_small_events() {
    let batch = |n: u64| {
        Event::Client(
            1,
            ClientMsg::Submit {
                tasks: (0..n)
                    .map(|i| fxr_protocol::Task {
                        id: TaskId(i),
                        function: fxr_protocol::Function::Builtin(fxr_protocol::Builtin::Noop),
                        args: Vec::new(),
                        attempt: 0,
                        container: None,
                    })
                    .collect(),
            },
        )
    };
    // Batches of 10,000 tasks: the loop dispatches after the seventh (70,000 tasks), not
    // after taking in all of a burst of millions.
    let mut intake = Intake::default();
    let taken = (1..=100)
        .take_while(|_| intake.take(&batch(10_000)))
        .count();
    assert_eq!(taken, 6, "six batches, and the seventh ends the intake");
    // Events without tasks are batched up to the event bound.
    let mut intake = Intake::default();
    let taken = (0..200_000)
        .take_while(|_| intake.take(&Event::PipeOpened(1)))
        .count();
    assert_eq!(taken, EVENTS_BEFORE_DISPATCH - 1);
}
