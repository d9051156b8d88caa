//! What a binary upgrade takes from the running listeners (a copy of every
//! listening socket, every listener's state) and what the next process's
//! [`Server::start_with`] takes back.

use super::Server;
use crate::listener::Inherited;
use crate::state::SavedListener;
use std::io;
use std::net::SocketAddr;

/// What the process this one replaces hands over (binary upgrade): its listening
/// sockets and each listener's state. [`Server::start_with`] takes them before any
/// listener accepts.
#[derive(Debug, Default)]
pub struct Handover {
    pub sockets: Inherited,
    pub listeners: Vec<SavedListener>,
}

impl Server {
    /// A copy of every listening socket, by configured address, to hand to the
    /// process replacing this one.
    pub fn listening_sockets(&self) -> io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
        let state = self.state();
        let mut out = Vec::new();
        for accepting in state
            .listeners
            .values()
            .filter_map(|e| e.accepting.as_ref())
        {
            for socket in &accepting.sockets {
                out.push((accepting.configured, socket.try_clone()?));
            }
        }
        Ok(out)
    }

    /// Every listener's state, to hand to the process replacing this one.
    pub fn save(&self) -> Vec<SavedListener> {
        self.listeners().iter().map(|l| l.save()).collect()
    }
}
