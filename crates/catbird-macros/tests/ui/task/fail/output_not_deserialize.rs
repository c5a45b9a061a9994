use serde::Serialize;

#[derive(Serialize)]
struct Receipt {
    id: String,
}

#[catbird::task]
async fn send_email(to: String) -> anyhow::Result<Receipt> {
    Ok(Receipt { id: to })
}

fn main() {}
