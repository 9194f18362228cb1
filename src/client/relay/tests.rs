use super::*;
use crate::protocol::backend as backend_msg;

const MAX: usize = 1 << 20;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The bytes a protocol builder appends.
fn built(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    build(&mut out);
    out
}

// Client messages.
fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}
fn parse() -> Vec<u8> {
    msg(b'P', b"\0SELECT 1\0\0\0")
}
fn bind() -> Vec<u8> {
    msg(b'B', b"\0\0\0\0\0\0\0\0")
}
fn describe(kind: u8) -> Vec<u8> {
    msg(b'D', &[kind, 0])
}
fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}
fn sync() -> Vec<u8> {
    msg(b'S', b"")
}
fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}
fn copy_done() -> Vec<u8> {
    msg(b'c', b"")
}

// Backend messages.
fn rfq(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}
fn row_desc() -> Vec<u8> {
    built(|o| backend_msg::row_description(o, &[]))
}
fn param_desc() -> Vec<u8> {
    built(|o| backend_msg::parameter_description(o, &[]))
}
fn data_row() -> Vec<u8> {
    built(|o| backend_msg::data_row(o, [Some(&b"1"[..])]))
}
fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', format!("{tag}\0").as_bytes())
}
fn error(severity: &str) -> Vec<u8> {
    msg(
        b'E',
        format!("S{severity}\0V{severity}\0C42601\0Msyntax error\0\0").as_bytes(),
    )
}
fn copy_in_response() -> Vec<u8> {
    built(|o| backend_msg::copy_in_response(o, 0, &[]))
}

/// Feeds backend bytes until the relay stops for something other than a ParameterStatus.
fn backend(relay: &mut Relay, data: &[u8], out: &mut Vec<u8>) -> (usize, BackendStop) {
    let mut pos = 0;
    loop {
        let (n, stop) = relay.on_backend_data(&data[pos..], out).unwrap();
        pos += n;
        if !matches!(stop, BackendStop::ParameterStatus { .. }) {
            return (pos, stop);
        }
    }
}

fn client(relay: &mut Relay, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (n, stop) = relay.on_client_data(data, &mut out).unwrap();
    assert_eq!((n, stop), (data.len(), ClientStop::NeedMore));
    out
}

#[test]
fn simple_query_releases_at_idle_ready_for_query() {
    let mut r = Relay::new(MAX);
    let q = query("SELECT 1");
    assert_eq!(client(&mut r, &q), q);
    assert!(!r.is_idle());
    let reply = cat(&[row_desc(), data_row(), complete("SELECT 1"), rfq(b'I')]);
    let mut out = Vec::new();
    assert_eq!(
        backend(&mut r, &reply, &mut out),
        (reply.len(), BackendStop::Idle)
    );
    assert_eq!(out, reply);
    assert!(r.is_idle());
}

#[test]
fn open_transaction_keeps_the_backend() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("BEGIN"));
    let mut out = Vec::new();
    let reply = cat(&[complete("BEGIN"), rfq(b'T')]);
    assert_eq!(
        backend(&mut r, &reply, &mut out),
        (reply.len(), BackendStop::NeedMore)
    );
    assert!(!r.is_idle());
    client(&mut r, &query("COMMIT"));
    let reply = cat(&[complete("COMMIT"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
}

#[test]
fn pipeline_releases_only_after_the_last_sync() {
    let mut r = Relay::new(MAX);
    let batch = cat(&[
        parse(),
        bind(),
        execute(),
        sync(),
        bind(),
        execute(),
        sync(),
    ]);
    client(&mut r, &batch);
    assert_eq!(r.outstanding(), 7);
    let first = cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        data_row(),
        complete("SELECT 1"),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &first, &mut out).1, BackendStop::NeedMore);
    let second = cat(&[msg(b'2', b""), complete("SELECT 1"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &second, &mut out).1, BackendStop::Idle);
}

#[test]
fn pipeline_error_skips_to_sync() {
    let mut r = Relay::new(MAX);
    // The second Parse fails: the server skips Bind, Execute and even a simple Query up to
    // the Sync, then answers the Sync.
    client(
        &mut r,
        &cat(&[
            parse(),
            parse(),
            bind(),
            execute(),
            query("SELECT 2"),
            sync(),
        ]),
    );
    let reply = cat(&[msg(b'1', b""), error("ERROR"), rfq(b'I')]);
    let mut out = Vec::new();
    assert_eq!(
        backend(&mut r, &reply, &mut out),
        (reply.len(), BackendStop::Idle)
    );
    assert_eq!(out, reply);
}

#[test]
fn error_in_simple_query_still_waits_for_ready_for_query() {
    let mut r = Relay::new(MAX);
    client(&mut r, &cat(&[query("SELEC 1"), query("SELECT 2")]));
    let mut out = Vec::new();
    let first = cat(&[error("ERROR"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &first, &mut out).1, BackendStop::NeedMore);
    let second = cat(&[row_desc(), data_row(), complete("SELECT 1"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &second, &mut out).1, BackendStop::Idle);
}

#[test]
fn describe_statement_and_portal() {
    let mut r = Relay::new(MAX);
    client(
        &mut r,
        &cat(&[parse(), describe(b'S'), bind(), describe(b'P'), sync()]),
    );
    let reply = cat(&[
        msg(b'1', b""),
        param_desc(),
        row_desc(),
        msg(b'2', b""),
        msg(b'n', b""),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
}

#[test]
fn describe_waits_for_its_kind_byte() {
    let mut r = Relay::new(MAX);
    let d = describe(b'S');
    let mut out = Vec::new();
    assert_eq!(
        r.on_client_data(&d[..5], &mut out).unwrap(),
        (0, ClientStop::NeedMore)
    );
    assert!(out.is_empty());
    assert_eq!(
        r.on_client_data(&d, &mut out).unwrap(),
        (d.len(), ClientStop::NeedMore)
    );
}

#[test]
fn copy_in_via_simple_query() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("COPY t FROM STDIN"));
    let mut out = Vec::new();
    assert_eq!(
        backend(&mut r, &copy_in_response(), &mut out).1,
        BackendStop::NeedMore
    );
    assert!(r.server_in_copy_in());
    client(
        &mut r,
        &cat(&[copy_data(b"1\n"), copy_data(b"2\n"), copy_done()]),
    );
    assert!(!r.server_in_copy_in());
    let end = cat(&[complete("COPY 2"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &end, &mut out).1, BackendStop::Idle);
}

#[test]
fn sync_pipelined_behind_copy_is_ignored_like_the_server_does() {
    // tokio-postgres: Bind, Execute, Sync, then (after CopyInResponse) data, CopyDone, Sync.
    let mut r = Relay::new(MAX);
    client(&mut r, &cat(&[bind(), execute(), sync()]));
    let mut out = Vec::new();
    let started = cat(&[msg(b'2', b""), copy_in_response()]);
    assert_eq!(backend(&mut r, &started, &mut out).1, BackendStop::NeedMore);
    client(&mut r, &cat(&[copy_data(b"x\n"), copy_done(), sync()]));
    let end = cat(&[complete("COPY 1"), rfq(b'I')]);
    assert_eq!(
        backend(&mut r, &end, &mut out),
        (end.len(), BackendStop::Idle)
    );
}

#[test]
fn copy_done_sent_before_copy_in_response_is_accounted_for() {
    let mut r = Relay::new(MAX);
    client(
        &mut r,
        &cat(&[
            bind(),
            execute(),
            sync(),
            copy_data(b"x\n"),
            copy_done(),
            sync(),
        ]),
    );
    let reply = cat(&[
        msg(b'2', b""),
        copy_in_response(),
        complete("COPY 1"),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
}

#[test]
fn error_during_copy_in_then_sync() {
    let mut r = Relay::new(MAX);
    client(&mut r, &cat(&[bind(), execute(), sync()]));
    let mut out = Vec::new();
    backend(
        &mut r,
        &cat(&[msg(b'2', b""), copy_in_response()]),
        &mut out,
    );
    client(&mut r, &copy_data(b"not a number\n"));
    // The server fails the COPY, leaves COPY IN and skips to the next Sync.
    assert_eq!(
        backend(&mut r, &error("ERROR"), &mut out).1,
        BackendStop::NeedMore
    );
    assert!(!r.server_in_copy_in());
    client(&mut r, &cat(&[copy_done(), sync()]));
    assert_eq!(backend(&mut r, &rfq(b'I'), &mut out).1, BackendStop::Idle);
}

#[test]
fn only_copy_messages_during_copy_in() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("COPY t FROM STDIN"));
    backend(&mut r, &copy_in_response(), &mut Vec::new());
    let err = r
        .on_client_data(&query("SELECT 1"), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, RelayError::ClientMessage { tag: b'Q', .. }));
}

#[test]
fn copy_out_streams_through() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("COPY t TO STDOUT"));
    let reply = cat(&[
        built(|o| backend_msg::copy_out_response(o, 0, &[])),
        copy_data(b"1\n"),
        copy_data(b"2\n"),
        msg(b'c', b""),
        complete("COPY 2"),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert_eq!(out, reply);
}

#[test]
fn large_data_rows_stream_in_pieces() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("SELECT big"));
    let big = msg(b'D', &vec![7u8; 300_000]);
    let reply = cat(&[row_desc(), big, complete("SELECT 1"), rfq(b'I')]);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut last = BackendStop::NeedMore;
    // Arrives in 1000-byte reads; nothing is held back beyond a partial header.
    for chunk_end in (1000..).step_by(1000).map(|e: usize| e.min(reply.len())) {
        let (n, stop) = r.on_backend_data(&reply[pos..chunk_end], &mut out).unwrap();
        pos += n;
        last = stop;
        assert!(chunk_end - pos < 6, "held back {} bytes", chunk_end - pos);
        if chunk_end == reply.len() {
            break;
        }
    }
    assert_eq!(last, BackendStop::Idle);
    assert_eq!(out, reply);
}

#[test]
fn any_split_of_a_session_gives_the_same_output() {
    let client_bytes = cat(&[
        parse(),
        bind(),
        describe(b'P'),
        execute(),
        sync(),
        query("x"),
    ]);
    let backend_bytes = cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        row_desc(),
        data_row(),
        complete("SELECT 1"),
        rfq(b'I'),
        error("ERROR"),
        rfq(b'I'),
    ]);
    for split in 1..backend_bytes.len() {
        let mut r = Relay::new(MAX);
        let mut to_backend = Vec::new();
        let (n, _) = r
            .on_client_data(
                &client_bytes[..split.min(client_bytes.len())],
                &mut to_backend,
            )
            .unwrap();
        let (m, _) = r
            .on_client_data(&client_bytes[n..], &mut to_backend)
            .unwrap();
        assert_eq!(n + m, client_bytes.len());
        assert_eq!(to_backend, client_bytes);
        let mut out = Vec::new();
        let mut buf = backend_bytes[..split].to_vec();
        let (used, _) = backend(&mut r, &buf, &mut out);
        buf.drain(..used);
        buf.extend_from_slice(&backend_bytes[split..]);
        let (used, stop) = backend(&mut r, &buf, &mut out);
        assert_eq!(
            (used, stop),
            (buf.len(), BackendStop::Idle),
            "split at {split}"
        );
        assert_eq!(out, backend_bytes);
    }
}

#[test]
fn unexpected_backend_message_is_a_desync() {
    let mut r = Relay::new(MAX);
    client(&mut r, &cat(&[parse(), sync()]));
    let err = r
        .on_backend_data(&msg(b'2', b""), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        RelayError::Desync {
            tag: b'2',
            expected: Some(Expect::Parse)
        }
    );
    let mut idle = Relay::new(MAX);
    assert!(idle.on_backend_data(&data_row(), &mut Vec::new()).is_err());
    assert!(
        idle.on_backend_data(&msg(b'K', b"12345678"), &mut Vec::new())
            .is_err()
    );
}

#[test]
fn terminate_is_consumed_not_forwarded() {
    let mut r = Relay::new(MAX);
    let data = cat(&[query("SELECT 1"), msg(b'X', b""), query("after")]);
    let mut out = Vec::new();
    let (n, stop) = r.on_client_data(&data, &mut out).unwrap();
    assert_eq!(stop, ClientStop::Terminate);
    assert_eq!(n, query("SELECT 1").len() + 5);
    assert_eq!(out, query("SELECT 1"));
}

#[test]
fn fatal_error_is_forwarded_and_reported() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("SELECT pg_sleep(10)"));
    let fatal = error("FATAL");
    let mut out = Vec::new();
    assert_eq!(
        r.on_backend_data(&fatal, &mut out).unwrap(),
        (fatal.len(), BackendStop::Fatal)
    );
    assert_eq!(out, fatal);
}

#[test]
fn parameter_status_is_forwarded_and_located() {
    let mut r = Relay::new(MAX);
    client(&mut r, &query("SET TimeZone = 'UTC'"));
    let ps = msg(b'S', b"TimeZone\0UTC\0");
    let reply = cat(&[complete("SET"), ps.clone(), rfq(b'I')]);
    let mut out = Vec::new();
    let (n, stop) = r.on_backend_data(&reply, &mut out).unwrap();
    let start = complete("SET").len() + 5;
    assert_eq!(
        stop,
        BackendStop::ParameterStatus {
            start,
            end: n,
            forwarded: true
        }
    );
    assert_eq!(&reply[start..n], b"TimeZone\0UTC\0");
    let (_, stop) = r.on_backend_data(&reply[n..], &mut out).unwrap();
    assert_eq!(stop, BackendStop::Idle);
    assert_eq!(out, reply);
}

#[test]
fn swallowed_requests_produce_no_client_output() {
    let mut r = Relay::new(MAX);
    r.push(Expect::Cycle, Route::Swallow, Effect::None);
    let reply = cat(&[
        msg(b'N', b"SWARNING\0C25P01\0Mno transaction\0\0"),
        complete("ROLLBACK"),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert!(out.is_empty());
}

#[test]
fn pipeline_depth_is_bounded() {
    let mut r = Relay::new(MAX);
    let one = sync();
    let many: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * (MAX_PIPELINE + 10))
        .collect();
    let mut out = Vec::new();
    let (n, stop) = r.on_client_data(&many, &mut out).unwrap();
    assert_eq!(stop, ClientStop::PipelineFull);
    assert_eq!(n, one.len() * MAX_PIPELINE);
}

#[test]
fn absurd_lengths_are_rejected_before_buffering() {
    let mut r = Relay::new(MAX);
    let mut bad = vec![b'Q'];
    bad.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        r.on_client_data(&bad, &mut Vec::new()),
        Err(RelayError::Framing(_))
    ));
    let mut short = vec![b'Q'];
    short.extend_from_slice(&3u32.to_be_bytes());
    assert!(r.on_client_data(&short, &mut Vec::new()).is_err());
}

fn statement(query: &[u8]) -> Arc<Statement> {
    super::super::statements::Registry::new(10, 10).get_or_insert(&super::super::statements::Key {
        query,
        param_types: &[],
        search_path: None,
    })
}

#[test]
fn local_answers_keep_their_place_in_the_sequence() {
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    // Nothing outstanding: emitted at once.
    r.push_local(&msg(b'1', b""), &mut out);
    assert_eq!(out, msg(b'1', b""));
    out.clear();
    // Behind a forwarded Bind: after its BindComplete, before the next message.
    client(&mut r, &bind());
    r.push_local(&msg(b'3', b""), &mut out);
    client(&mut r, &cat(&[execute(), sync()]));
    assert!(out.is_empty());
    let reply = cat(&[msg(b'2', b""), complete("SELECT 1"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert_eq!(
        out,
        cat(&[
            msg(b'2', b""),
            msg(b'3', b""),
            complete("SELECT 1"),
            rfq(b'I')
        ])
    );
}

#[test]
fn local_answers_after_an_error_are_dropped_like_the_server_would() {
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    client(&mut r, &bind());
    r.push_local(&msg(b'1', b""), &mut out);
    client(&mut r, &sync());
    let reply = cat(&[error("ERROR"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert_eq!(out, reply, "no ParseComplete after the failed Bind");
}

#[test]
fn swallowed_requests_still_show_their_errors() {
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    r.push(Expect::Parse, Route::Swallow, Effect::None);
    client(&mut r, &cat(&[bind(), sync()]));
    let reply = cat(&[error("ERROR"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert_eq!(out, reply);
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    r.push(Expect::Parse, Route::Swallow, Effect::None);
    client(&mut r, &sync());
    let reply = cat(&[msg(b'1', b""), rfq(b'I')]);
    backend(&mut r, &reply, &mut out);
    assert_eq!(
        out,
        rfq(b'I'),
        "the ParseComplete of an injected Parse is dropped"
    );
}

#[test]
fn replaced_errors_take_the_servers_place() {
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    let ours: Arc<[u8]> = error("ERROR").into();
    r.push_failing(Expect::Bind, ours.clone());
    client(&mut r, &cat(&[execute(), sync()]));
    let theirs = msg(
        b'E',
        b"SERROR\0VERROR\0C26000\0Mprepared statement does not exist\0\0",
    );
    let reply = cat(&[theirs, rfq(b'I')]);
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert_eq!(out, cat(&[ours.to_vec(), rfq(b'I')]));
}

#[test]
fn outcomes_report_prepares_that_succeed_fail_or_are_skipped() {
    let s1 = statement(b"a");
    let s2 = statement(b"b");
    let prepare = |s: &Arc<Statement>| Effect::Prepare {
        statement: s.clone(),
        client_name: None,
    };
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    r.push(Expect::Parse, Route::Swallow, prepare(&s1));
    r.push(Expect::Parse, Route::Forward, prepare(&s2));
    client(&mut r, &sync());
    backend(
        &mut r,
        &cat(&[msg(b'1', b""), error("ERROR"), rfq(b'I')]),
        &mut out,
    );
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(
        matches!(&outcomes[0], Outcome::Succeeded(Effect::Prepare { statement, .. }) if statement.id == s1.id)
    );
    assert!(
        matches!(&outcomes[1], Outcome::Failed(Effect::Prepare { statement, .. }) if statement.id == s2.id)
    );
    // Skipped after an earlier error counts as failed.
    let mut r = Relay::new(MAX);
    client(&mut r, &bind());
    r.push(Expect::Parse, Route::Swallow, prepare(&s1));
    client(&mut r, &sync());
    backend(&mut r, &cat(&[error("ERROR"), rfq(b'I')]), &mut out);
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert_eq!(outcomes.len(), 1);
    assert!(matches!(&outcomes[0], Outcome::Failed(_)));
}

#[test]
fn describe_answers_are_captured_whole_even_when_split() {
    let s = statement(b"SELECT 1");
    let mut r = Relay::new(MAX);
    r.push(
        Expect::DescribeStatement,
        Route::Forward,
        Effect::Describe(s.clone()),
    );
    client(&mut r, &sync());
    let answer = cat(&[param_desc(), row_desc()]);
    let reply = cat(&[answer.clone(), rfq(b'I')]);
    let mut out = Vec::new();
    let mut buf = reply[..3].to_vec();
    let (n, _) = backend(&mut r, &buf, &mut out);
    buf.drain(..n);
    buf.extend_from_slice(&reply[3..]);
    assert_eq!(backend(&mut r, &buf, &mut out).1, BackendStop::Idle);
    assert_eq!(out, reply);
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(
        matches!(&outcomes[0], Outcome::Described(st, bytes) if st.id == s.id && *bytes == answer)
    );
}

#[test]
fn streamed_messages_may_exceed_the_whole_message_limit() {
    let mut r = Relay::new(1000);
    client(&mut r, &query("SELECT big"));
    let big = msg(b'D', &vec![1u8; 5000]);
    let reply = cat(&[big, complete("SELECT 1"), rfq(b'I')]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    let mut r = Relay::new(1000);
    client(&mut r, &query("SELECT 1"));
    let huge_error = msg(b'E', &vec![b'x'; 5000]);
    assert!(matches!(
        r.on_backend_data(&huge_error, &mut out),
        Err(RelayError::Framing(_))
    ));
}

#[test]
fn parameter_read_back_collects_its_row_and_shows_nothing() {
    let mut r = Relay::new(MAX);
    r.push(
        Expect::Cycle,
        Route::Swallow,
        Effect::Capture(vec!["search_path".into(), "nope".into()]),
    );
    let reply = cat(&[
        row_desc(),
        built(|o| backend_msg::data_row(o, [Some(&b"public"[..]), None])),
        complete("SELECT 1"),
        rfq(b'I'),
    ]);
    let mut out = Vec::new();
    assert_eq!(backend(&mut r, &reply, &mut out).1, BackendStop::Idle);
    assert!(out.is_empty());
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(matches!(
        &outcomes[..],
        [Outcome::Captured(names, values)]
            if names.len() == 2 && *values == [Some("public".to_owned()), None]
    ));
}

#[test]
fn a_failed_simple_query_cycle_reports_its_effect_failed() {
    let sync_effect = || Effect::Sync(vec![("search_path".into(), Some("a".into()))]);
    let mut r = Relay::new(MAX);
    r.push(Expect::Cycle, Route::Swallow, sync_effect());
    let mut out = Vec::new();
    let failed = cat(&[error("ERROR"), rfq(b'I')]);
    assert_eq!(backend(&mut r, &failed, &mut out).1, BackendStop::Idle);
    assert_eq!(out, error("ERROR"), "the error reaches the client");
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(
        matches!(&outcomes[..], [Outcome::SyncFailed(e)] if *e == error("ERROR")),
        "a failed sync carries its error: {outcomes:?}"
    );
    r.push(
        Expect::Cycle,
        Route::Swallow,
        Effect::Capture(vec!["x".into()]),
    );
    backend(&mut r, &failed, &mut out);
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(matches!(
        &outcomes[..],
        [Outcome::Failed(Effect::Capture(_))]
    ));

    // The flag does not outlive its cycle.
    r.push(Expect::Cycle, Route::Swallow, sync_effect());
    let ok = cat(&[row_desc(), data_row(), complete("SELECT 1"), rfq(b'I')]);
    backend(&mut r, &ok, &mut out);
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(matches!(
        &outcomes[..],
        [Outcome::Succeeded(Effect::Sync(_))]
    ));
}

#[test]
fn requests_sent_after_an_error_but_before_sync_expect_nothing() {
    // The server discards everything up to the next Sync, including what the client sends
    // after the error was already read (its batch split across reads).
    let mut r = Relay::new(MAX);
    let mut out = Vec::new();
    client(&mut r, &parse());
    let (_, stop) = backend(&mut r, &error("ERROR"), &mut out);
    assert_eq!(stop, BackendStop::NeedMore);
    assert!(r.skipping_to_sync());
    client(&mut r, &cat(&[bind(), execute()]));
    r.push(
        Expect::Parse,
        Route::Swallow,
        Effect::Sync(vec![("x".into(), None)]),
    );
    let outcomes: Vec<Outcome> = r.take_outcomes().collect();
    assert!(
        matches!(&outcomes[..], [Outcome::Failed(Effect::Sync(_))]),
        "pglink's own request is reported failed at once"
    );
    client(&mut r, &sync());
    assert!(!r.skipping_to_sync());
    out.clear();
    assert_eq!(backend(&mut r, &rfq(b'I'), &mut out).1, BackendStop::Idle);
    assert_eq!(out, rfq(b'I'));
    assert!(r.is_idle());
}

// ---- statements timed and reported ---------------------------------------------------------

/// What `take_statements` reported, as (started, end, tag, SQLSTATE) with times in ms
/// since `t0`.
fn statements(relay: &mut Relay, t0: Instant) -> Vec<(u64, StatementEnd, String, Option<String>)> {
    relay
        .take_statements()
        .map(|s| {
            (
                s.started.duration_since(t0).as_millis() as u64,
                s.end,
                String::from_utf8_lossy(s.tag.as_bytes()).into_owned(),
                s.sqlstate.map(|c| c.to_string()),
            )
        })
        .collect()
}

#[test]
fn simple_queries_are_timed_from_when_the_server_began_on_them() {
    use std::time::Duration;
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut relay = Relay::new(MAX);
    relay.set_now(ms(1));
    client(
        &mut relay,
        &cat(&[query("SELECT 1"), query("SELECT 2; SELECT 3")]),
    );
    relay.set_now(ms(4));
    let mut out = Vec::new();
    backend(
        &mut relay,
        &cat(&[row_desc(), data_row(), complete("SELECT 1"), rfq(b'I')]),
        &mut out,
    );
    // The second Query began when the first ended, not when it was sent.
    relay.set_now(ms(9));
    let second = [complete("SELECT 1"), complete("SELECT 7"), rfq(b'I')].concat();
    assert_eq!(backend(&mut relay, &second, &mut out).1, BackendStop::Idle);
    use StatementEnd::*;
    assert_eq!(
        statements(&mut relay, t0),
        vec![
            (1, Completed, "SELECT 1".into(), None),
            // A Query of several statements is one, with the last tag.
            (4, Completed, "SELECT 7".into(), None),
        ]
    );
    // A failed Query carries its SQLSTATE, not a tag.
    relay.set_now(ms(10));
    client(&mut relay, &query("SELEC"));
    relay.set_now(ms(12));
    backend(&mut relay, &cat(&[error("ERROR"), rfq(b'I')]), &mut out);
    assert_eq!(
        statements(&mut relay, t0),
        vec![(10, Failed, String::new(), Some("42601".into()))]
    );
}

#[test]
fn an_extended_error_fails_its_execute_and_skips_the_rest_of_the_batch() {
    use std::time::Duration;
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut relay = Relay::new(MAX);
    relay.set_now(ms(0));
    let batch = |relay: &mut Relay| {
        client(
            relay,
            &cat(&[
                parse(),
                bind(),
                execute(),
                bind(),
                execute(),
                bind(),
                execute(),
                sync(),
            ]),
        )
    };
    batch(&mut relay);
    let mut out = Vec::new();
    relay.set_now(ms(3));
    let answers = [
        msg(b'1', b""),
        msg(b'2', b""),
        complete("INSERT 0 1"),
        msg(b'2', b""),
        error("ERROR"),
        rfq(b'I'),
    ]
    .concat();
    assert_eq!(backend(&mut relay, &answers, &mut out).1, BackendStop::Idle);
    use StatementEnd::*;
    assert_eq!(
        statements(&mut relay, t0),
        vec![
            (0, Completed, "INSERT 0 1".into(), None),
            (3, Failed, String::new(), Some("42601".into())),
            (3, Skipped, String::new(), None),
        ]
    );
    // A failed Parse fails the batch's first Execute: the statement the client ran.
    relay.set_now(ms(5));
    batch(&mut relay);
    relay.set_now(ms(6));
    backend(&mut relay, &cat(&[error("ERROR"), rfq(b'I')]), &mut out);
    assert_eq!(
        statements(&mut relay, t0),
        vec![
            (5, Failed, String::new(), Some("42601".into())),
            (6, Skipped, String::new(), None),
            (6, Skipped, String::new(), None),
        ]
    );
    // Without the session's clock nothing is timed (the relay cleaning up after a client).
    relay.stop_timing();
    batch(&mut relay);
    backend(&mut relay, &answers, &mut out);
    assert!(!relay.has_statements());
}
