//! Round trips for every message, and the decoder against hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fxr_protocol::*;

fn sample_tasks() -> Vec<Task> {
    vec![
        Task {
            id: TaskId(1),
            function: Function::Builtin(Builtin::Noop),
            args: vec![],
            attempt: 0,
            container: None,
        },
        Task {
            id: TaskId(u64::MAX),
            function: Function::Shell(Box::new(ShellSpec {
                command: "echo {x}".into(),
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                walltime_ms: 1500,
            })),
            args: br#"{"x":"hi"}"#.to_vec(),
            attempt: 2,
            container: Some(Box::new(ContainerSpec {
                runtime: "bwrap".into(),
                image: "/srv/images/debian".into(),
                options: vec!["--setenv".into(), "A".into(), "b".into()],
            })),
        },
    ]
}

fn samples() -> Vec<Vec<u8>> {
    let results = vec![
        TaskResult {
            id: TaskId(1),
            outcome: Outcome::Success(b"null".to_vec()),
            run_us: 3,
        },
        TaskResult::failure(TaskId(2), FailureKind::Timeout, "walltime 1s exceeded"),
    ];
    let cap = vec![Capacity {
        container: String::new(),
        total: 2,
        free: 3,
        warm: 2,
        unused: 1,
    }];
    let mut out = Vec::new();
    let mgr = vec![
        ManagerMsg::Register(Registration {
            manager_id: ManagerId(7),
            block_id: BlockId("123".into()),
            rank: 1,
            block_size: 2,
            hostname: "node1".into(),
            cores: 2,
            memory_bytes: 1 << 34,
            workers: 2,
            prefetch: 4,
            containers: vec![String::new()],
            version: VERSION.into(),
            proof: [7; 32],
            simulated: false,
        }),
        ManagerMsg::Heartbeat {
            capacity: cap.clone(),
            counters: WorkerCounters {
                cold_starts: 3,
                container_switches: 1,
                container_errors: 0,
            },
        },
        ManagerMsg::Ack { seq: 9 },
        ManagerMsg::Results {
            results: results.clone(),
            capacity: cap,
            counters: WorkerCounters::default(),
            acks: Vec::new(),
        },
        ManagerMsg::Returned {
            tasks: vec![TaskId(4)],
        },
        ManagerMsg::Drained,
    ];
    for m in &mgr {
        let f = encode(m).unwrap();
        assert_eq!(&decode::<ManagerMsg>(&f).unwrap(), m);
        out.push(f);
    }
    let ic = vec![
        InterchangeMsg::Welcome {
            heartbeat_period_ms: 5000,
            heartbeat_threshold_ms: 20000,
            workers: WorkerSettings {
                runtimes: vec![(
                    "podman".into(),
                    "podman run -i {image} /fxr/fxr worker".into(),
                )],
                max_idle_ms: 120_000,
            },
        },
        InterchangeMsg::Refused {
            reason: "bad secret".into(),
        },
        InterchangeMsg::Tasks {
            seq: 3,
            tasks: sample_tasks(),
        },
        InterchangeMsg::Drain {
            endpoint_stopping: true,
        },
        InterchangeMsg::Heartbeat,
        InterchangeMsg::Cancel {
            tasks: vec![TaskId(1)],
        },
    ];
    for m in &ic {
        let f = encode(m).unwrap();
        assert_eq!(&decode::<InterchangeMsg>(&f).unwrap(), m);
        out.push(f);
    }
    let w = vec![
        ToWorker::Run {
            tasks: sample_tasks(),
        },
        ToWorker::Stop,
    ];
    for m in &w {
        let f = encode(m).unwrap();
        assert_eq!(&decode::<ToWorker>(&f).unwrap(), m);
        out.push(f);
    }
    // What a manager sends from borrowed tasks is the same frame, byte for byte.
    let tasks = sample_tasks();
    assert_eq!(
        encode(&ToWorkerRef::Run { tasks: &tasks }).unwrap(),
        encode(&ToWorker::Run { tasks }).unwrap()
    );
    let fw = vec![
        FromWorker::Ready { pid: 5 },
        FromWorker::Results { results },
    ];
    for m in &fw {
        let f = encode(m).unwrap();
        assert_eq!(&decode::<FromWorker>(&f).unwrap(), m);
        out.push(f);
    }
    let c = vec![
        ClientMsg::Submit {
            tasks: sample_tasks(),
        },
        ClientMsg::Status,
        ClientMsg::Shutdown,
    ];
    for m in &c {
        let f = encode(m).unwrap();
        assert_eq!(&decode::<ClientMsg>(&f).unwrap(), m);
        out.push(f);
    }
    out
}

#[test]
fn every_message_round_trips() {
    assert!(samples().len() > 15);
}

fn try_all(bytes: &[u8]) {
    // Only the absence of a panic matters here; errors are expected.
    let _ = decode::<ManagerMsg>(bytes);
    let _ = decode::<InterchangeMsg>(bytes);
    let _ = decode::<ToWorker>(bytes);
    let _ = decode::<FromWorker>(bytes);
    let _ = decode::<ClientMsg>(bytes);
    let _ = decode::<FrontMsg>(bytes);
    if bytes.len() >= FRAME_HEADER_LEN {
        let _ = decode_body::<ManagerMsg>(&bytes[FRAME_HEADER_LEN..]);
        let _ = decode_body::<InterchangeMsg>(&bytes[FRAME_HEADER_LEN..]);
    }
}

#[test]
fn truncated_frames_are_errors_not_panics() {
    for frame in samples() {
        for cut in 0..frame.len() {
            let piece = &frame[..cut];
            assert!(decode::<ManagerMsg>(piece).is_err() || cut == frame.len());
            try_all(piece);
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let samples = samples();
    for round in 0..200_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // Pure noise behind a valid header, so the body decoder is exercised.
            let len = rng.usize(0..64);
            let mut b = vec![b'F', b'X', PROTOCOL_VERSION, 0];
            b.extend_from_slice(&(len as u32).to_le_bytes());
            b.extend((0..len).map(|_| rng.u8(..)));
            b
        } else {
            // A valid frame with a few bytes flipped.
            let mut b = samples[rng.usize(0..samples.len())].clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(0..b.len());
                b[i] = rng.u8(..);
            }
            b
        };
        try_all(&bytes);
    }
}

#[test]
fn header_checks_name_the_problem() {
    assert_eq!(parse_header(b"FX"), Err(FrameError::Truncated { len: 2 }));
    assert_eq!(
        parse_header(b"GET / HT"),
        Err(FrameError::BadMagic { found: *b"GE" })
    );
    assert_eq!(
        parse_header(&[b'F', b'X', 99, 0, 0, 0, 0, 0]),
        Err(FrameError::BadVersion { found: 99 })
    );
    let huge = [b'F', b'X', PROTOCOL_VERSION, 0, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        parse_header(&huge),
        Err(FrameError::TooLarge { .. })
    ));
    let mut f = encode(&ClientMsg::Status).unwrap();
    f.push(0);
    assert!(matches!(
        decode::<ClientMsg>(&f),
        Err(FrameError::LengthMismatch { .. })
    ));
}

#[test]
fn oversized_message_is_refused_when_encoding() {
    let big = Task {
        id: TaskId(1),
        function: Function::Builtin(Builtin::Echo),
        args: vec![b'x'; MAX_FRAME + 1],
        attempt: 0,
        container: None,
    };
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        encode_into(&mut out, &ClientMsg::Submit { tasks: vec![big] }),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(
        out,
        vec![1, 2, 3],
        "a refused frame leaves the buffer as it was"
    );
}

#[test]
fn protocol_depends_on_no_io_runtime() {
    // Architecture invariant: the protocol crate does no I/O, so it must not pull in tokio or nng.
    for forbidden in ["tokio", "nng", "nng-sys"] {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "-p",
                "fxr-protocol",
                "-e",
                "normal",
                "-i",
                forbidden,
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains(forbidden),
            "fxr-protocol depends on {forbidden}:\n{text}"
        );
    }
}
