//! The error type of the catbird client.

use tokio_postgres::error::SqlState;

/// The SQLSTATE catbird's SQL functions raise for a queue, task or flow that
/// does not exist.
pub const SQLSTATE_NOT_DEFINED: &str = "CB001";

/// The SQLSTATE catbird's SQL functions raise for an invalid argument.
pub const SQLSTATE_INVALID_ARGUMENT: &str = "CB002";

/// The error message of a flow run that completed without any step of its
/// output priority producing an output.
pub const NO_OUTPUT_CANDIDATE: &str = "no output candidate produced output";

/// The SQLSTATE catbird's SQL functions raise for a run id that does not
/// exist.
pub const SQLSTATE_NOT_FOUND: &str = "CB003";

/// Errors returned by the catbird client.
///
/// Messages start with `catbird:`. Test for a kind with `matches!` or with the
/// predicates ([`Error::is_not_defined`], ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue, task, flow or step name breaks the naming rule: 1 to 58
    /// characters of `a-z`, `0-9` and `_`. Raised before any SQL runs.
    #[error("catbird: invalid {kind} name \"{name}\": {rule}")]
    InvalidName {
        /// What was being named: "queue", "task", ...
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// Which part of the rule it breaks.
        rule: NameRule,
    },

    /// An argument other than a name is invalid: a non-positive quantity or
    /// duration, mismatched list lengths, headers that are not an object.
    #[error("catbird: {0}")]
    InvalidArgument(String),

    /// A task or step condition does not parse, or its JSON form is invalid,
    /// as found by the Rust parser. The SQL parser raises the same message
    /// with SQLSTATE CB002, which arrives as [`Error::InvalidArgument`].
    #[error("catbird: {0}")]
    InvalidCondition(#[from] crate::condition::ConditionError),

    /// A payload cannot be stored: it contains the NUL character, which
    /// PostgreSQL's jsonb cannot hold, or it exceeds the maximum size.
    #[error("catbird: invalid {what}: {reason}")]
    InvalidPayload {
        /// Which payload: "message body", "headers", ...
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// The operation needs a queue, task or flow that does not exist.
    #[error("catbird: {0}")]
    NotDefined(String),

    /// The requested object does not exist.
    #[error("catbird: {kind} \"{name}\" not found")]
    NotFound {
        /// What was looked up: "queue", "task run", ...
        kind: &'static str,
        /// Its name or id.
        name: String,
    },

    /// A payload could not be encoded to JSON or decoded into the requested
    /// type.
    #[error("catbird: JSON {action} failed for {what}: {source}")]
    Json {
        /// "encoding" or "decoding".
        action: &'static str,
        /// Which value.
        what: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },

    /// PostgreSQL returned an error, or the connection failed. The message
    /// carries the server's error text and SQLSTATE.
    #[error("catbird: database error: {}", database_error_text(.0))]
    Database(tokio_postgres::Error),

    /// The run failed for good; the text is its error message.
    #[error("catbird: run failed: {0}")]
    RunFailed(String),

    /// The run was canceled, with the reason given, if any.
    #[error("catbird: run canceled{}", .0.as_ref().map(|reason| format!(": {reason}")).unwrap_or_default())]
    RunCanceled(Option<String>),

    /// The task run was skipped because the task's condition was false.
    #[error("catbird: run skipped: condition not met")]
    RunSkipped,

    /// The run expired before it finished.
    #[error("catbird: run expired before it finished")]
    RunExpired,

    /// The run has not finished yet.
    #[error("catbird: run not completed: current status is {0}")]
    RunNotCompleted(crate::task::RunStatus),

    /// A signal could not be delivered: the run is not started, or the step
    /// does not exist, does not wait for a signal, already has one, or has
    /// already started.
    #[error(
        "catbird: signal not delivered to step \"{step}\" of flow \"{flow}\" run {run_id}: \
         the step may not wait for a signal, may already have one, or the run is no longer started"
    )]
    SignalNotDelivered {
        /// The flow.
        flow: String,
        /// The flow run.
        run_id: i64,
        /// The step.
        step: String,
    },

    /// A flow on-fail handler asked for the output of a step that did not
    /// complete in the failed run.
    #[error("catbird: step \"{0}\" has no completed output in this run")]
    UnknownStepOutput(String),

    /// A flow on-fail handler asked for the failed step's input, but none was
    /// recorded (the run failed because no step produced an output).
    #[error("catbird: no failed step input was recorded")]
    NoFailedStepInput,

    /// A flow on-fail handler asked for the failed step's signal input, but
    /// the step had none.
    #[error("catbird: the failed step had no signal input")]
    NoFailedStepSignal,

    /// A run-context helper was used outside the handler it belongs to.
    #[error("catbird: no run context: {0} can only be called inside a task or flow handler")]
    NoRunContext(&'static str),

    /// No connection could be taken from the pool.
    #[error("catbird: no database connection available: {0}")]
    Pool(deadpool_postgres::PoolError),
}

/// Describes a driver error. `tokio_postgres::Error` displays only its kind
/// ("db error"), so the server's message and SQLSTATE, or the underlying I/O
/// error, are taken from its source.
fn database_error_text(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// The part of the naming rule a name breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// The name is empty.
    Empty,
    /// The name is longer than 58 characters.
    TooLong,
    /// The name contains a character other than `a-z`, `0-9` and `_`.
    InvalidCharacter,
    /// The name is reserved.
    Reserved,
}

impl std::fmt::Display for NameRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameRule::Empty => "must not be empty",
            NameRule::TooLong => "too long, maximum 58 characters",
            NameRule::InvalidCharacter => "may only contain a-z, 0-9 and _",
            NameRule::Reserved => "is reserved",
        })
    }
}

impl Error {
    /// Whether a needed queue, task or flow does not exist.
    pub fn is_not_defined(&self) -> bool {
        matches!(self, Error::NotDefined(_))
    }

    /// Whether a flow run failed because no step of its output priority
    /// completed (all were skipped).
    pub fn is_no_output_candidate(&self) -> bool {
        matches!(self, Error::RunFailed(message) if message == NO_OUTPUT_CANDIDATE)
    }

    /// Whether the requested object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Whether the error is a rejected argument, name or payload.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidName { .. }
                | Error::InvalidArgument(_)
                | Error::InvalidCondition(_)
                | Error::InvalidPayload { .. }
        )
    }

    /// The SQLSTATE of a database error, if there is one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Database(error) => error.code(),
            _ => None,
        }
    }

    /// Whether retrying the same call later may succeed: a lost connection,
    /// an exhausted pool, a serialization failure or a deadlock.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Database(error) => {
                error.is_closed()
                    || error.as_db_error().is_none()
                    || matches!(
                        error.code(),
                        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE
                            || *code == SqlState::T_R_DEADLOCK_DETECTED
                            || *code == SqlState::ADMIN_SHUTDOWN
                            || *code == SqlState::CANNOT_CONNECT_NOW
                            || *code == SqlState::TOO_MANY_CONNECTIONS
                    )
            }
            _ => false,
        }
    }

    pub(crate) fn json_encode(what: &'static str, source: serde_json::Error) -> Self {
        Error::Json {
            action: "encoding",
            what,
            source,
        }
    }

    pub(crate) fn json_decode(what: &'static str, source: serde_json::Error) -> Self {
        Error::Json {
            action: "decoding",
            what,
            source,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    /// Maps catbird's own SQLSTATEs to typed variants, keeping the message the
    /// SQL function wrote, and wraps every other error.
    fn from(error: tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            let message = db
                .message()
                .strip_prefix("catbird: ")
                .unwrap_or(db.message())
                .to_owned();
            match db.code().code() {
                SQLSTATE_NOT_DEFINED => return Error::NotDefined(message),
                SQLSTATE_INVALID_ARGUMENT => return Error::InvalidArgument(message),
                SQLSTATE_NOT_FOUND => return not_found_from_sql(&message),
                _ => {}
            }
        }
        Error::Database(error)
    }
}

/// Builds [`Error::NotFound`] from the SQL message
/// `<task|flow> run <id> of <task|flow> "<name>" not found`, in the shape the
/// client's own lookups use (`kind` "task run", `name` "<name>/<id>").
fn not_found_from_sql(message: &str) -> Error {
    let words: Vec<&str> = message.split_whitespace().collect();
    let kind = match words.first() {
        Some(&"task") => "task run",
        Some(&"flow") => "flow run",
        _ => "run",
    };
    match (words.get(2), words.get(5)) {
        (Some(id), Some(name)) => Error::NotFound {
            kind,
            name: format!("{}/{id}", name.trim_matches('"')),
        },
        _ => Error::NotFound {
            kind,
            name: message.trim_end_matches(" not found").to_owned(),
        },
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Error::from(error),
            other => Error::Pool(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_not_found_reads_like_the_client_lookup() {
        let error = not_found_from_sql("task run 4242 of task \"t\" not found");
        assert_eq!(error.to_string(), "catbird: task run \"t/4242\" not found");
        assert!(error.is_not_found());
    }

    #[test]
    fn unexpected_not_found_message_is_kept() {
        let error = not_found_from_sql("something else not found");
        assert_eq!(
            error.to_string(),
            "catbird: run \"something else\" not found"
        );
    }
}
