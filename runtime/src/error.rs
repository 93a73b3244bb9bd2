//! The one error type of multiproc: an opaque struct with a kind.

use std::fmt;

/// What went wrong, in broad strokes. Match on it to decide what to do; read the
/// [`Error`]'s `Display` for the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task panicked in the worker; the message carries the panic message.
    Panicked,
    /// The worker process died (signal, abort, `exit`) while it held the item.
    WorkerDied,
    /// The task ran past the pool's time limit and its worker was killed.
    Timeout,
    /// An argument or a result could not be serialized or deserialized.
    Serialization,
    /// A worker process could not be started, or it is not the same build as the parent.
    Spawn,
    /// The pool (or queue) was closed before the work could be submitted.
    Closed,
    /// The configuration is invalid (a worker count of 0, a bad environment variable, …).
    InvalidConfig,
    /// An operating-system call failed.
    Io,
    /// A worker sent something that is not a valid frame of the multiproc protocol.
    Protocol,
    /// Ctrl-C (SIGINT) stopped the pool, built with
    /// [`Interrupt::Cancel`](crate::Interrupt::Cancel), while the call ran.
    Interrupted,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Panicked => "panicked",
            ErrorKind::WorkerDied => "worker died",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Serialization => "serialization failed",
            ErrorKind::Spawn => "could not start a worker",
            ErrorKind::Closed => "closed",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Io => "I/O error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

/// The error of every fallible multiproc call.
///
/// Its `Display` is one line that names the task, the item and the cause, for example
/// ``task `app::t1` panicked on item 7 in worker 4242: attempt to divide by zero``.
/// Errors returned by a user's own function (`fn f(..) -> Result<T, E>`) are not this
/// type: they come back as values inside the result vector.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    task: Option<&'static str>,
    index: Option<usize>,
    pid: Option<u32>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result<T, multiproc::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                task: None,
                index: None,
                pid: None,
                source: None,
            }),
        }
    }

    /// An [`ErrorKind::Io`] error (or another kind) wrapping an `io::Error`, with context.
    pub(crate) fn io(kind: ErrorKind, context: impl fmt::Display, err: std::io::Error) -> Self {
        let mut e = Error::new(kind, format!("{context}: {err}"));
        e.inner.source = Some(Box::new(err));
        e
    }

    pub(crate) fn with_task(mut self, task: &'static str) -> Self {
        self.inner.task = Some(task);
        self
    }

    pub(crate) fn with_index(mut self, index: usize) -> Self {
        self.inner.index = Some(index);
        self
    }

    /// Names the pipeline stage the error happened in.
    pub(crate) fn in_stage(mut self, stage: usize) -> Self {
        self.inner.message = format!("in pipeline stage {stage}: {}", self.inner.message);
        self
    }

    pub(crate) fn with_pid(mut self, pid: u32) -> Self {
        self.inner.pid = Some(pid);
        self
    }

    /// A copy for each of several items that failed for one reason (a chunk lost with
    /// its worker). The source, if any, is kept as text.
    pub(crate) fn duplicate(&self) -> Self {
        let i = &self.inner;
        Error {
            inner: Box::new(Inner {
                kind: i.kind,
                message: i.message.clone(),
                task: i.task,
                index: i.index,
                pid: i.pid,
                source: None,
            }),
        }
    }

    /// The broad category of the failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The position in the input of the item that failed, when one item is to blame.
    pub fn task_index(&self) -> Option<usize> {
        self.inner.index
    }

    /// The process id of the worker that ran (or held) the failed item, when known.
    pub fn worker_pid(&self) -> Option<u32> {
        self.inner.pid
    }

    /// The full name (`module::path::fn`) of the `#[parallel]` function involved, if any.
    pub fn task_name(&self) -> Option<&'static str> {
        self.inner.task
    }

    /// The cause, without the task, item and worker that `Display` adds around it.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        match i.task {
            Some(task) => write!(f, "task `{task}` {}", i.kind.describe())?,
            None => f.write_str(i.kind.describe())?,
        }
        if let Some(index) = i.index {
            write!(f, " on item {index}")?;
        }
        if let Some(pid) = i.pid {
            write!(f, " in worker {pid}")?;
        }
        if !i.message.is_empty() {
            f.write_str(": ")?;
            // One line, always: a multi-line panic message is folded.
            let mut lines = i.message.lines();
            if let Some(first) = lines.next() {
                f.write_str(first)?;
            }
            for line in lines {
                write!(f, " | {line}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Error")
            .field("kind", &i.kind)
            .field("task", &i.task)
            .field("index", &i.index)
            .field("pid", &i.pid)
            .field("message", &i.message)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_and_names_everything() {
        let e = Error::new(ErrorKind::Panicked, "boom\nsecond line")
            .with_task("app::t1")
            .with_index(7)
            .with_pid(42);
        assert_eq!(
            e.to_string(),
            "task `app::t1` panicked on item 7 in worker 42: boom | second line"
        );
        assert_eq!(e.kind(), ErrorKind::Panicked);
        assert_eq!(e.task_index(), Some(7));
        assert_eq!(e.worker_pid(), Some(42));
    }

    #[test]
    fn io_error_keeps_its_source() {
        let io = std::io::Error::from(rustix::io::Errno::MFILE);
        let e = Error::io(ErrorKind::Spawn, "spawning a worker", io);
        assert_eq!(e.kind(), ErrorKind::Spawn);
        assert!(std::error::Error::source(&e).is_some());
        assert!(
            e.to_string()
                .starts_with("could not start a worker: spawning a worker: ")
        );
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: std::error::Error + Send + Sync + 'static>() {}
        check::<Error>();
    }
}
