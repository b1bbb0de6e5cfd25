//! Helpers shared by the integration tests (each test file includes this with `mod support;`).

use futures::StreamExt;

/// Every byte of a task, read in order as its pieces land.
pub async fn read_all(task: &std::sync::Arc<dfdaemon::task::Task>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut r = task.reader(0, None);
    while let Some(chunk) = r.next().await {
        out.extend_from_slice(&chunk.expect("read"));
    }
    out
}
