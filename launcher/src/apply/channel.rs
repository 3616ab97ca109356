//! The socket between the child that builds an instance and the launcher: typed messages, one
//! byte each on a SOCK_SEQPACKET pair, and the FUSE descriptor passed with SCM_RIGHTS.

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// Child → launcher: here is the mounted image's /dev/fuse (with the descriptor attached).
    FuseFd,
    /// Child → launcher: the exec comes next; stop storing pages (see fuse/push.rs).
    AboutToExec,
    /// Launcher → child: no store is in progress any more.
    StoresEnded,
    /// Keeper → leader: the shared instance's root is built.
    RootReady,
}

impl Message {
    fn byte(self) -> u8 {
        match self {
            Message::FuseFd => b'f',
            Message::AboutToExec => b'x',
            Message::StoresEnded => b'k',
            Message::RootReady => b'r',
        }
    }

    fn from_byte(b: u8) -> Option<Message> {
        [
            Message::FuseFd,
            Message::AboutToExec,
            Message::StoresEnded,
            Message::RootReady,
        ]
        .into_iter()
        .find(|m| m.byte() == b)
    }
}

/// One end of the pair.
pub struct Channel(OwnedFd);

impl Channel {
    /// The launcher's end and the child's end.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair")?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send(&self, m: Message) -> Result<()> {
        nix::unistd::write(&self.0, &[m.byte()]).with_context(|| format!("sending {m:?}"))?;
        Ok(())
    }

    /// The next message; None when the other end closed without one.
    pub fn recv(&self) -> Result<Option<Message>> {
        let mut byte = [0u8; 1];
        match nix::unistd::read(&self.0, &mut byte).context("reading from the other process")? {
            0 => Ok(None),
            _ => match Message::from_byte(byte[0]) {
                Some(m) => Ok(Some(m)),
                None => bail!("unexpected message byte {:#04x}", byte[0]),
            },
        }
    }

    /// Whether the next message is `want` (anything else, an error or the end: no).
    pub fn recv_is(&self, want: Message) -> bool {
        matches!(self.recv(), Ok(Some(m)) if m == want)
    }

    pub fn send_fd(&self, fd: RawFd) -> Result<()> {
        let fds = [fd];
        let byte = [Message::FuseFd.byte()];
        let iov = [IoSlice::new(&byte)];
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
        Ok(())
    }

    /// The descriptor the child sent, or None when it closed the socket without one (it failed).
    pub fn recv_fd(&self) -> Result<Option<OwnedFd>> {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!(RawFd);
        let msg = loop {
            match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.context("receiving the FUSE connection from the child")?,
            }
        };
        for cmsg in msg.cmsgs().context("reading the child's message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
                    return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_a_descriptor_cross() {
        let (a, b) = Channel::pair().unwrap();
        b.send(Message::AboutToExec).unwrap();
        assert_eq!(a.recv().unwrap(), Some(Message::AboutToExec));
        let f = std::fs::File::open("/dev/null").unwrap();
        b.send_fd(f.as_raw_fd()).unwrap();
        assert!(a.recv_fd().unwrap().is_some());
        drop(b);
        assert_eq!(a.recv().unwrap(), None, "the other end closed");
    }
}
