//! The hand-over channel between the old and the new process: one end of a unix
//! stream socket pair each. Messages are frames (a 4-byte big-endian length, then
//! JSON); listening sockets travel as `SCM_RIGHTS` descriptors, in batches, before
//! the frame that says which address each one serves.

use crate::state::SavedListener;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

/// Descriptors per message: well under the kernel's `SCM_MAX_FD` (253).
const FDS_PER_MESSAGE: usize = 200;
/// The largest frame either side accepts (a hand-over of several full persistence
/// tables is tens of MiB).
const MAX_FRAME: usize = 1 << 30;

/// What goes over the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New to old: the listener file is valid; send the sockets and the state.
    Hello { pid: u32 },
    /// Old to new: `count` descriptors came with this frame.
    Fds { count: usize },
    /// Old to new: the descriptors received so far, in order, are listening
    /// sockets of these configured addresses; and every listener's state.
    Handover {
        sockets: Vec<SocketAddr>,
        listeners: Vec<SavedListener>,
    },
    /// New to old: serving (every listener bound, admin server up); stop accepting.
    Ready { pid: u32 },
}

fn frame(message: &Message) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(message)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn parse(body: &[u8]) -> io::Result<Message> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn frame_len(head: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    Ok(len)
}

/// The old process's end (async: it keeps serving meanwhile).
pub struct OldEnd {
    stream: tokio::net::UnixStream,
}

impl OldEnd {
    pub fn new(stream: UnixStream) -> io::Result<OldEnd> {
        stream.set_nonblocking(true)?;
        Ok(OldEnd {
            stream: tokio::net::UnixStream::from_std(stream)?,
        })
    }

    /// The next message; `UnexpectedEof` when the new process closed its end (it
    /// exited).
    pub async fn receive(&mut self) -> io::Result<Message> {
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).await?;
        let mut body = vec![0u8; frame_len(head)?];
        self.stream.read_exact(&mut body).await?;
        parse(&body)
    }

    pub async fn send(&mut self, message: &Message) -> io::Result<()> {
        self.stream.write_all(&frame(message)?).await
    }

    /// Sends `fds` in batches, each with an [`Message::Fds`] frame.
    pub async fn send_fds(&mut self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        for batch in fds.chunks(FDS_PER_MESSAGE) {
            let bytes = frame(&Message::Fds { count: batch.len() })?;
            let sent = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    send_with_fds(&self.stream, &bytes, batch)
                })
                .await?;
            // The descriptors went with the first byte; the rest of the frame, if
            // the socket took only part of it, follows plainly.
            self.stream.write_all(&bytes[sent..]).await?;
        }
        Ok(())
    }
}

fn send_with_fds(socket: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "descriptors do not fit the control buffer",
        ));
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// The new process's end (blocking: it runs before the process serves).
pub struct NewEnd {
    stream: UnixStream,
    /// Bytes received and not yet parsed.
    buffer: Vec<u8>,
    /// Descriptors received so far, in order.
    pub fds: Vec<OwnedFd>,
}

impl NewEnd {
    pub fn new(stream: UnixStream, timeout: std::time::Duration) -> io::Result<NewEnd> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(NewEnd {
            stream,
            buffer: Vec::new(),
            fds: Vec::new(),
        })
    }

    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        self.stream.write_all(&frame(message)?)
    }

    /// The next message other than [`Message::Fds`] (whose descriptors are kept
    /// in [`NewEnd::fds`]).
    pub fn receive(&mut self) -> io::Result<Message> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                match message {
                    Message::Fds { .. } => continue,
                    other => return Ok(other),
                }
            }
            self.fill()?;
        }
    }

    fn parse_buffered(&mut self) -> io::Result<Option<Message>> {
        let Some(head) = self.buffer.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = frame_len(*head)?;
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let message = parse(&self.buffer[4..4 + len])?;
        self.buffer.drain(..4 + len);
        Ok(Some(message))
    }

    /// One `recvmsg`: bytes to the buffer, descriptors (close-on-exec) to `fds`.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::other("descriptors were cut off in transit"));
        }
        if received.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the old process closed the channel",
            ));
        }
        self.buffer.extend_from_slice(&chunk[..received.bytes]);
        Ok(())
    }
}

/// Reads one whole frame from a blocking stream (tests).
#[cfg(test)]
fn read_frame(stream: &mut UnixStream) -> io::Result<Message> {
    use std::io::Read;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    let mut body = vec![0u8; frame_len(head)?];
    stream.read_exact(&mut body)?;
    parse(&body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sockets_and_state_cross_and_stay_the_same_sockets() {
        let (old, new) = UnixStream::pair().unwrap();
        let mut old = OldEnd::new(old).unwrap();
        // More listening sockets than one message carries.
        let listeners: Vec<std::net::TcpListener> = (0..FDS_PER_MESSAGE + 7)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let receiving = std::thread::spawn(move || {
            let mut new = NewEnd::new(new, Duration::from_secs(10)).unwrap();
            new.send(&Message::Hello { pid: 7 }).unwrap();
            let message = new.receive().unwrap();
            new.send(&Message::Ready { pid: 7 }).unwrap();
            (message, new.fds)
        });
        assert_eq!(old.receive().await.unwrap(), Message::Hello { pid: 7 });
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        old.send_fds(&fds).await.unwrap();
        let handover = Message::Handover {
            sockets: addrs.clone(),
            listeners: Vec::new(),
        };
        old.send(&handover).await.unwrap();
        assert_eq!(old.receive().await.unwrap(), Message::Ready { pid: 7 });
        let (message, fds) = receiving.join().unwrap();
        assert_eq!(message, handover);
        let got: Vec<SocketAddr> = fds
            .into_iter()
            .map(|fd| std::net::TcpListener::from(fd).local_addr().unwrap())
            .collect();
        assert_eq!(got, addrs, "the very sockets, in order");
        // The channel closed by the other side reads as EOF.
        let err = old.receive().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_short_or_oversized_frame_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut new = NewEnd::new(b, Duration::from_secs(5)).unwrap();
        assert_eq!(
            new.receive().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&frame(&Message::Hello { pid: 1 }).unwrap())
            .unwrap();
        assert_eq!(read_frame(&mut b).unwrap(), Message::Hello { pid: 1 });
        a.write_all(b"\0\0\0\x05{bad}").unwrap();
        assert_eq!(
            read_frame(&mut b).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
