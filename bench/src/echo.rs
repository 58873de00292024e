//! The benchmark's workload: `bench.v1.EchoService`, served like any mesh
//! app (health, reflection, `x-served-by`, graceful shutdown) through
//! [`mesh::app::serve`], so a sidecar can register it.

use mesh::proto::bench::v1::echo_service_server::{EchoService, EchoServiceServer};
use mesh::proto::bench::v1::{EchoReply, EchoRequest, EchoStreamRequest};
use tonic::{Request, Response, Status};

/// The mesh service name of the echo servers.
pub const SERVICE: &str = "echo";

/// The fully qualified gRPC service.
pub const GRPC_SERVICE: &str = "bench.v1.EchoService";

/// Most replies one `EchoStream` call gets: a bound on what one request
/// can make the server do.
pub const MAX_STREAM_REPLIES: u32 = 10_000;

/// Flags of `bench echo-server`: the standard app flags, so a
/// [`meshctl::demo::Topology`] plan can start it like a shop service.
#[derive(Debug, clap::Args)]
pub struct EchoServerArgs {
    #[command(flatten)]
    app: mesh::app::AppArgs,
    /// Answer each unary call this many milliseconds late: a slow
    /// instance among fast ones (`bench balance`).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

/// Longest `--delay-ms`: a slow instance, not a dead one.
pub const MAX_DELAY_MS: u64 = 10_000;

/// Echoes payloads back, `delay` late.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo {
    delay: std::time::Duration,
}

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Response::new(EchoReply {
            payload: request.into_inner().payload,
        }))
    }

    type EchoStreamStream = tokio_stream::Iter<std::vec::IntoIter<Result<EchoReply, Status>>>;

    async fn echo_stream(
        &self,
        request: Request<EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let request = request.into_inner();
        if request.count > MAX_STREAM_REPLIES {
            return Err(Status::invalid_argument(format!(
                "count: at most {MAX_STREAM_REPLIES}"
            )));
        }
        let reply = EchoReply {
            payload: request.payload,
        };
        let replies = vec![Ok(reply); request.count as usize];
        Ok(Response::new(tokio_stream::iter(replies)))
    }
}

/// Serves the echo service until SIGTERM or SIGINT.
pub async fn run(args: EchoServerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.delay_ms <= MAX_DELAY_MS,
        "--delay-ms: at most {MAX_DELAY_MS}"
    );
    let echo = Echo {
        delay: std::time::Duration::from_millis(args.delay_ms),
    };
    mesh::app::run(SERVICE, &args.app, |_shutdown| async {
        Ok::<_, std::convert::Infallible>(mesh::app::App::new(
            &[GRPC_SERVICE],
            tonic::service::Routes::new(EchoServiceServer::new(echo)),
        ))
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[test]
    fn the_service_name_is_the_generated_one() {
        use tonic::server::NamedService;
        assert_eq!(
            <EchoServiceServer<Echo> as NamedService>::NAME,
            GRPC_SERVICE
        );
    }

    #[tokio::test]
    async fn echo_stream_sends_count_replies_and_refuses_too_many() {
        let payload = b"abc".to_vec();
        let response = Echo::default()
            .echo_stream(Request::new(EchoStreamRequest {
                payload: payload.clone(),
                count: 3,
            }))
            .await
            .expect("a stream");
        let replies: Vec<_> = response.into_inner().collect().await;
        assert_eq!(replies.len(), 3);
        assert!(replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.payload == payload)));

        let refused = Echo::default()
            .echo_stream(Request::new(EchoStreamRequest {
                payload,
                count: MAX_STREAM_REPLIES + 1,
            }))
            .await;
        assert_eq!(
            refused.map(|_| ()).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
