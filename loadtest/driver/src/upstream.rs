//! `streamcap-driver upstream`: a licence server that answers at once, for
//! the licence gate's benchmark (`loadtest/licence-bench.sh`). Every request
//! on a keep-alive HTTP/1.1 connection gets `200`, `Content-Type:
//! application/octet-stream` and a fixed body of `--answer-bytes` bytes;
//! the request body (sized by `Content-Length`) is read and dropped. One
//! thread, so that it takes no more of the machine than it needs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted; more closes the connection.
const MAX_HEAD: usize = 16 * 1024;

pub fn run(listen: &str, answer_bytes: usize, for_secs: Option<Duration>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("upstream: listening on {addr}, answering {answer_bytes} bytes");
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {answer_bytes}\r\n\r\n")
                .into_bytes();
        answer.extend(std::iter::repeat_n(0x5a, answer_bytes));
        let answer: &'static [u8] = answer.leak();
        let serve = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(connection(stream, answer));
                    }
                    Err(e) => {
                        eprintln!("upstream: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        match for_secs {
            Some(d) => {
                let _ = tokio::time::timeout(d, serve).await;
            }
            None => serve.await,
        }
        Ok(())
    })
}

/// Answers every request on one connection, pipelined ones included.
async fn connection(mut s: TcpStream, answer: &'static [u8]) {
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let (head, len) = match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                (head, len)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            _ => return,
        };
        while buf.len() < head + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head + len);
        if s.write_all(answer).await.is_err() {
            return;
        }
    }
}
