//! Every statement the client runs, in one place. Each one is a short call of
//! a `cb_*` function or a read of a catbird table; the integration suite
//! prepares all of them against a freshly migrated database.

/// `cb_create_queue`.
pub const CREATE_QUEUE: &str =
    "SELECT cb_create_queue(name => $1, expires_at => $2, description => $3)";

/// `cb_delete_queue`.
pub const DELETE_QUEUE: &str = "SELECT cb_delete_queue(name => $1)";

/// One queue's row.
pub const GET_QUEUE: &str =
    "SELECT name, description, created_at, expires_at FROM cb_queues WHERE name = $1";

/// Every queue, by name.
pub const LIST_QUEUES: &str =
    "SELECT name, description, created_at, expires_at FROM cb_queues ORDER BY name";

/// `cb_send`, one message.
pub const SEND: &str = "SELECT cb_send(queue => $1, body => $2, topic => $3, concurrency_key => $4, \
     headers => $5, visible_at => $6, expires_at => $7, priority => $8)";

/// `cb_send`, many messages.
pub const SEND_MANY: &str = "SELECT * FROM cb_send(queue => $1, bodies => $2, topic => $3, \
     concurrency_keys => $4, headers => $5, visible_at => $6, expires_at => $7, priority => $8)";

/// `cb_read`.
pub const READ: &str = "SELECT * FROM cb_read(queue => $1, quantity => $2, hide_for => $3)";

/// `cb_hide`, one message.
pub const HIDE: &str = "SELECT cb_hide(queue => $1, id => $2, hide_for => $3)";

/// `cb_hide`, many messages.
pub const HIDE_MANY: &str = "SELECT * FROM cb_hide(queue => $1, ids => $2, hide_for => $3)";

/// `cb_delete`, one message.
pub const DELETE: &str = "SELECT cb_delete(queue => $1, id => $2)";

/// `cb_delete`, many messages.
pub const DELETE_MANY: &str = "SELECT * FROM cb_delete(queue => $1, ids => $2)";

/// `cb_renew_message`: extends a lease the caller still holds.
pub const RENEW_MESSAGE: &str =
    "SELECT cb_renew_message(queue => $1, id => $2, deliveries => $3, hide_for => $4)";

/// Every statement above, for the prepare-all test.
pub const ALL: &[&str] = &[
    CREATE_QUEUE,
    DELETE_QUEUE,
    GET_QUEUE,
    LIST_QUEUES,
    SEND,
    SEND_MANY,
    READ,
    HIDE,
    HIDE_MANY,
    DELETE,
    DELETE_MANY,
    RENEW_MESSAGE,
];
