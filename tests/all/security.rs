//! A cluster on a network: every service refuses a caller without the cluster token, or with
//! another, before doing anything (the head, a node's control and worker services, its Flight
//! data plane, and the head's Flight SQL endpoint); a driver or node with a wrong token fails
//! with an error that says so; the head's token file is its user's alone.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use arrow_flight::flight_service_client::FlightServiceClient;
use bytes::Bytes;
use common::Cluster;
use manta::scheduler::proto::head_client::HeadClient;
use manta::scheduler::proto::node_client::NodeClient;
use manta::scheduler::proto::worker_client::WorkerClient;
use manta::scheduler::proto::{self};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Presents a header of our choosing, or none: what an outsider can send.
#[derive(Clone)]
struct Present(Option<AsciiMetadataValue>);

impl Interceptor for Present {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

type Outsider = InterceptedService<Channel, Present>;

/// The ways an outsider may come: no token, another random token, the token's first half, and
/// a header that is not even a bearer token.
fn outsiders() -> Vec<(&'static str, Present)> {
    let wrong = manta::Token::generate();
    vec![
        ("no token", Present(None)),
        ("another token", Present(Some(wrong.header_value()))),
        (
            "half of a token",
            Present(Some(
                format!("Bearer {}", &wrong.secret()[..32]).parse().unwrap(),
            )),
        ),
        (
            "a user and password",
            Present(Some("Basic bWFudGE6cGFzc3dvcmQ=".parse().unwrap())),
        ),
    ]
}

async fn channel(address: &str, present: Present) -> Outsider {
    let url = if address.starts_with("http") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(channel, present)
}

fn assert_refused<T: std::fmt::Debug>(who: &str, call: &str, result: Result<T, tonic::Status>) {
    match result {
        Err(status) => assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{who}: {call} was refused, but not as unauthenticated: {status}"
        ),
        Ok(answer) => panic!("{who}: {call} was answered: {answer:?}"),
    }
}

/// The node's own address, as the head lists it.
async fn node_address(head: &str, token: &manta::Token) -> String {
    let channel = manta::scheduler::server::connect_head(head, token)
        .await
        .unwrap();
    let nodes = HeadClient::new(channel)
        .list_nodes(proto::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    nodes[0].address.clone()
}

#[test]
fn every_service_refuses_a_caller_without_the_token_before_doing_anything() {
    let cluster =
        Cluster::start_with_head(&["--head", "--port", "0", "--flight-sql-port", "0"], &[""]);
    let head = cluster.head.address.clone();
    let token = manta::scheduler::cluster_token::resolve(None, &head).unwrap();
    let flight_sql = cluster
        .head
        .flight_sql
        .clone()
        .expect("a Flight SQL endpoint");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = node_address(&head, &token).await;
        for (who, present) in outsiders() {
            // The head: no node table, no fake node, no job, no executable.
            let mut client = HeadClient::new(channel(&head, present.clone()).await);
            let listed = client.list_nodes(proto::ListNodesRequest {}).await;
            assert_refused(who, "ListNodes", listed);
            let fake = client
                .register_node(proto::RegisterNodeRequest {
                    node_id: Bytes::copy_from_slice(manta::engine::NodeId::random().as_bytes()),
                    address: "http://127.0.0.1:9".into(),
                    resources: Some(proto::Resources {
                        cpus: 64.0,
                        ..Default::default()
                    }),
                    pid: 1,
                    name: String::new(),
                    shared_dir: String::new(),
                    spill_dir: String::new(),
                })
                .await;
            assert_refused(who, "RegisterNode", fake);
            let job = client
                .register_job(proto::RegisterJobRequest {
                    executable_hash: "00".repeat(32),
                    executable_size: 3,
                    ..Default::default()
                })
                .await;
            assert_refused(who, "RegisterJob", job);
            let events = client
                .task_events(proto::TaskEventsRequest::default())
                .await;
            assert_refused(who, "TaskEvents", events);
            let link = client
                .dashboard_link(proto::DashboardLinkRequest::default())
                .await;
            assert_refused(who, "DashboardLink", link);
            let chunk = proto::ExecutableChunk {
                hash: "00".repeat(32),
                data: Bytes::from_static(b"#!/bin/sh\ntouch /tmp/owned\n"),
            };
            let upload = client
                .upload_executable(futures::stream::iter([chunk]))
                .await;
            assert_refused(who, "UploadExecutable", upload);

            // A node: no freeing, no tasks, no attaching as a worker.
            let node_channel = channel(&node, present.clone()).await;
            let freed = NodeClient::new(node_channel.clone())
                .free_objects(proto::FreeObjectsRequest {
                    object_ids: vec![Bytes::from_static(&[0; 16])],
                })
                .await;
            assert_refused(who, "FreeObjects", freed);
            let tasks = NodeClient::new(node_channel.clone())
                .run_tasks(futures::stream::empty())
                .await;
            assert_refused(who, "RunTasks", tasks);
            let attached = WorkerClient::new(node_channel.clone())
                .attach(futures::stream::empty())
                .await;
            assert_refused(who, "Attach", attached);

            // A node's Flight data plane: no reading objects, no writing them.
            let mut flight = FlightServiceClient::new(node_channel);
            let got = flight
                .do_get(arrow_flight::Ticket::new(vec![0u8; 16]))
                .await;
            assert_refused(who, "DoGet", got);
            let put = flight
                .do_put(futures::stream::iter([arrow_flight::FlightData::default()]))
                .await;
            assert_refused(who, "DoPut", put);
            let listed = flight.list_flights(arrow_flight::Criteria::default()).await;
            assert_refused(who, "ListFlights", listed);

            // The head's Flight SQL endpoint: not even a handshake.
            let mut sql = FlightServiceClient::new(channel(&flight_sql, present).await);
            let shaken = sql
                .handshake(futures::stream::iter([
                    arrow_flight::HandshakeRequest::default(),
                ]))
                .await;
            assert_refused(who, "Handshake", shaken);
            let info = sql
                .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(
                    b"SELECT 1".to_vec(),
                ))
                .await;
            assert_refused(who, "GetFlightInfo", info);
        }
        // Nothing an outsider sent took effect: still one node.
        assert!(!node_address(&head, &token).await.is_empty());
    });

    // With the token (found in the head's token file, as on the head's machine), a driver runs.
    let ctx = cluster.connect();
    assert_eq!(ctx.range(1000).count().unwrap(), 1000);
}

#[test]
fn a_driver_or_node_with_a_wrong_token_fails_saying_so() {
    let cluster = Cluster::start(&[""]);
    let wrong = manta::Token::generate();
    let driver = manta::init_with(manta::Config {
        address: Some(cluster.head.address.clone()),
        token: Some(wrong.clone()),
        ..Default::default()
    });
    let error = manta::error_chain(&driver.unwrap_err());
    assert!(error.contains("wrong cluster token"), "{error}");

    let node = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["start", "--block", "--address", &cluster.head.address])
        .env("MANTA_TOKEN", wrong.secret())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!node.status.success());
    let said = String::from_utf8_lossy(&node.stderr);
    assert!(said.contains("wrong cluster token"), "{said}");
}

#[test]
fn the_heads_token_file_is_its_users_alone_and_goes_with_the_head() {
    let mut cluster = Cluster::start(&[]);
    let port: u16 = cluster
        .head
        .address
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let file = manta::scheduler::cluster_token::token_file(port);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    let dir_mode = std::fs::metadata(file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(secret.len(), 64, "256 bits as hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    cluster.head.stop();
    assert!(!file.exists(), "the token file outlived its head");
}
