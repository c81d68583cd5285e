//! The floor: a server that does nothing with its callers' audio, to measure what the kernel's TCP
//! path and the tokio runtime cost for a load before any voice work is done.
//!
//! It answers the WebSocket handshake of `/ws`, sends `{"type":"ready"}`, then reads and discards
//! every byte, on a current-thread runtime with one task per connection, as `voxd serve` runs on
//! one CPU. With `--talk` it also sends every caller three 20 ms frames of 16 kHz audio every
//! 60 ms, the way voxd paces a spoken answer, as if every caller were listening to the bot all the
//! time.
//!
//! ```text
//! cargo build --release -p voxd-bench --example floor
//! taskset -c 0 target/release/examples/floor 127.0.0.1:8080 [--talk] &
//! taskset -c 1 target/release/voxd bench --server ws://127.0.0.1:8080/ws -c 2000 --idle \
//!     --duration 15 --ramp-up 25 --server-pid $!
//! ```
//!
//! BENCHMARKS.md ("The floor") compares voxd with it under the same load.

use std::time::Duration;

use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// One paced batch: three binary frames of 640 bytes (20 ms of 16 kHz PCM16 each), unmasked as a
/// server sends them.
fn audio_batch() -> Vec<u8> {
    let mut batch = Vec::with_capacity(3 * (4 + 640));
    for _ in 0..3 {
        batch.extend_from_slice(&[0x82, 126, (640u16 >> 8) as u8, (640u16 & 0xff) as u8]);
        batch.extend(std::iter::repeat_n(0u8, 640));
    }
    batch
}

/// One read, as tokio's `AsyncRead` does it: a read that does not fill `buf` marks the socket not
/// ready, so no second read is needed to see `WouldBlock`. Returns the bytes read (0 at the end).
async fn read(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut filled = ReadBuf::new(buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut filled) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(filled.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Writes all of `bytes`, waiting for the socket as needed.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the upgrade request and answers it; the request must fit one 2 KiB buffer.
async fn handshake(stream: &TcpStream) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim().to_owned())
        .ok_or_else(|| std::io::Error::other("no Sec-WebSocket-Key"))?;
    let ready = br#"{"type":"ready"}"#;
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    response.extend_from_slice(&[0x81, ready.len() as u8]);
    response.extend_from_slice(ready);
    write_all(stream, &response).await
}

async fn caller(mut stream: TcpStream, talk: bool) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    handshake(&stream).await?;
    let mut buf = [0u8; 2048];
    if !talk {
        while read(&mut stream, &mut buf).await? > 0 {}
        return Ok(());
    }
    let batch = audio_batch();
    let mut pacing = tokio::time::interval(Duration::from_millis(60));
    loop {
        tokio::select! {
            biased;
            n = read(&mut stream, &mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = pacing.tick() => write_all(&stream, &batch).await?,
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let talk = args.any(|a| a == "--talk");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("floor listening on {addr} (talk: {talk})");
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                if let Err(e) = caller(stream, talk).await {
                    eprintln!("caller: {e}");
                }
            });
        }
    })
}
