//! `ship::call` is the function as written, with its attributes, and a
//! renamed step is named by its own name where other steps depend on it.
#![deny(warnings)]

/// Counts the items.
#[catbird::step(name = "count_items")]
#[cfg(not(any()))]
#[must_use = "the count is the step's output"]
pub(crate) async fn count(items: Vec<String>) -> anyhow::Result<usize> {
    Ok(items.len())
}

#[catbird::step(depends_on(count), signal)]
async fn ship(items: Vec<String>, #[signal] label: String, count: usize) -> anyhow::Result<String> {
    Ok(format!("{label}: {count} of {}", items.len()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count = count::call(vec!["ada".into(), "grace".into()])
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(
        count::definition().description.as_deref(),
        Some("Counts the items.")
    );
    let label = ship::call(vec![], "box".into(), 3).await.unwrap();
    assert_eq!(label, "box: 3 of 0");
    assert_eq!(ship::definition().depends_on[0].name, "count_items");
}
