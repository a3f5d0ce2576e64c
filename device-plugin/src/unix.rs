//! gRPC over unix sockets: a tonic client channel dialling a socket path (authority `localhost`, as the kubelet
//! sends it) and a listener stream for tonic servers. Shared with the kubelet simulator of the tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors of the unix socket helpers.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// Dialling the socket failed.
    #[error("failed to connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// Binding the socket failed.
    #[error("failed to listen on {path}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A channel to the gRPC server on the unix socket `path`. Connects eagerly, so a missing socket is an error now.
pub async fn connect(path: &Path) -> Result<Channel, UnixError> {
    let target = path.to_path_buf();
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { UnixStream::connect(target).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| UnixError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// Binds `path` (removing a stale socket file first) and returns the incoming-connection stream for tonic.
pub fn listen(path: &Path) -> Result<UnixListenerStream, UnixError> {
    if path.exists() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| UnixError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(UnixListenerStream::new(listener))
}
