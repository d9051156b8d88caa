//! The real `edgelb` binary as a child process, and what `/proc` says about a
//! process: CPU time, resident memory, open descriptors.

use super::daemon::Daemon;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `edgelb run --config FILE` (or `edgelb demo`), its stderr in a log
/// file; SIGTERM then SIGKILL when dropped (a [`Daemon`]), and its temporary
/// directory (holding `config` and `log`) removed.
pub struct Edgelb {
    daemon: Daemon,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The program started: the build's binary, or its copy in the temporary
    /// directory ([`Options::copy_binary`]), which a test may replace.
    pub binary: PathBuf,
}

/// How to start the binary.
#[derive(Default)]
pub struct Options {
    /// `RLIMIT_NOFILE` (soft and hard) set in the child before exec.
    pub nofile: Option<u64>,
    /// `RUST_LOG`; default `info`.
    pub rust_log: Option<String>,
    /// `TOKIO_WORKER_THREADS`.
    pub workers: Option<usize>,
    /// A network namespace to run in (`ip netns exec NS edgelb ...`, which execs
    /// edgelb itself: the guard's pid is edgelb's).
    pub netns: Option<String>,
    /// Run a copy of the binary in the temporary directory, so the test can put
    /// another build (or a broken one) at its path, as an upgrade does.
    pub copy_binary: bool,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

/// The binary cargo built for the tests.
pub fn built_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgelb"))
}

impl Edgelb {
    /// Writes `text` to a fresh `lb.toml` and starts the binary on it, logs to a file.
    pub fn start(text: &str, options: Options) -> Edgelb {
        let dir = super::temp_dir("proc");
        let config = dir.join("lb.toml");
        std::fs::write(&config, text).unwrap();
        let binary = if options.copy_binary {
            let copy = dir.join("edgelb");
            let _writing = super::daemon::EXEC_WRITE
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::fs::copy(built_binary(), &copy).unwrap();
            copy
        } else {
            built_binary()
        };
        let mut cmd = match &options.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null());
        Edgelb::spawn(cmd, dir, config, binary, options)
    }

    /// Puts `program` (bytes of an executable: another build, a script) at the
    /// binary's path the way an install does: a new file renamed over the old, so
    /// the running process keeps its own.
    pub fn replace_binary(&self, program: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let next = self.binary.with_extension("new");
        let _writing = super::daemon::EXEC_WRITE
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        std::fs::write(&next, program).unwrap();
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&next, &self.binary).unwrap();
    }

    /// Starts the binary on `text` (a [`super::config_text`] file) with its listener
    /// port rewritten to a free port and, when `admin` is given, its admin server on
    /// another free port with `admin` as extra `[admin]` lines; under
    /// `RLIMIT_NOFILE = nofile` when given. Returns once the listener accepts, with
    /// the listener's and the admin server's addresses.
    pub fn start_on_free_ports(
        text: &str,
        admin: Option<&str>,
        nofile: Option<u64>,
    ) -> (Edgelb, SocketAddr, Option<SocketAddr>) {
        let port = super::free_port();
        let mut text = text.replace("listener_port = 80", &format!("listener_port = {port}"));
        let admin = admin.map(|extra| {
            let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
            text = text.replace("address = \"\"", &format!("address = \"{addr}\"\n{extra}"));
            addr
        });
        let mut lb = Edgelb::start(
            &text,
            Options {
                nofile,
                ..Options::default()
            },
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        lb.wait_listening(addr);
        (lb, addr, admin)
    }

    /// Starts `edgelb demo` with its stdout piped (`child.stdout`), for the banner
    /// naming the listener; logs to a file. `config` names a file never written.
    pub fn demo(options: Options) -> Edgelb {
        let dir = super::temp_dir("demo");
        let config = dir.join("lb.toml");
        let mut cmd = Command::new(built_binary());
        cmd.arg("demo").stdout(Stdio::piped());
        Edgelb::spawn(cmd, dir, config, built_binary(), options)
    }

    /// Runs `cmd` (stdout already chosen) with stdin closed and stderr to
    /// `dir/edgelb.log`.
    fn spawn(
        mut cmd: Command,
        dir: PathBuf,
        config: PathBuf,
        binary: PathBuf,
        options: Options,
    ) -> Edgelb {
        let log = dir.join("edgelb.log");
        cmd.env("RUST_LOG", options.rust_log.as_deref().unwrap_or("info"))
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(n) = options.workers {
            cmd.env("TOKIO_WORKER_THREADS", n.to_string());
        }
        if let Some(limit) = options.nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork
            // and exec here.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Edgelb {
            daemon: Daemon::spawn_in(dir, &mut cmd),
            config,
            log,
            binary,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The piped stdout of `edgelb demo`.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.daemon.take_stdout()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts a connection (the listener is bound).
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.daemon.try_wait() {
                panic!("edgelb exited with {status}:\n{}", self.log_text());
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("edgelb never listened on {addr}:\n{}", self.log_text());
    }

    /// Sends `sig` to the child; panics if it cannot be delivered. Only while the
    /// child has not been reaped (by `is_running` or `wait_exit` seeing it exit).
    pub fn signal(&self, sig: i32) {
        self.daemon.signal(sig);
    }

    /// The exit status of the process started, once it has exited, without
    /// reaping it or stopping its group: after a binary upgrade the group goes on
    /// in the new process.
    pub fn exit_status_leaving_group(&self) -> Option<ExitStatus> {
        self.daemon.peek_exit()
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.try_wait().is_none()
    }

    /// Waits for the child to exit and returns its status; panics (with the log)
    /// if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.daemon.wait_exit(within).unwrap_or_else(|| {
            panic!(
                "edgelb did not exit within {within:?}:\n{}",
                self.log_text()
            )
        })
    }
}

/// User plus system CPU time of `pid`, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Raises this process's soft descriptor limit to its hard limit; returns it.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
    rl.rlim_cur
}

/// Makes this process the reaper of its descendants' orphans
/// (`PR_SET_CHILD_SUBREAPER`), so a process that a child started and outlived it
/// (the new process of a binary upgrade) can be waited for with [`reap`].
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(rc, 0, "prctl: {}", std::io::Error::last_os_error());
}

/// Waits up to `within` for `pid`, a child of this process (an orphan it reaps as
/// subreaper), to exit; reaps it and returns its status. `None` if still running.
pub fn reap(pid: u32, within: Duration) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our integer.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        assert!(
            rc >= 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if rc == pid as i32 {
            return Some(ExitStatus::from_raw(status));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is alive (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}
