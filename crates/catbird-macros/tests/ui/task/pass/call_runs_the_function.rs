//! `send_email::call` is the function as written, with its attributes.
#![deny(warnings)]

/// Counts the recipients.
#[catbird::task(name = "count_recipients")]
#[cfg(not(any()))]
#[must_use = "the count is the task's output"]
pub(crate) async fn count_recipients(recipients: Vec<String>) -> anyhow::Result<usize> {
    Ok(recipients.len())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count = count_recipients::call(vec!["ada".into(), "grace".into()])
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        count_recipients::definition().description.as_deref(),
        Some("Counts the recipients.")
    );
}
