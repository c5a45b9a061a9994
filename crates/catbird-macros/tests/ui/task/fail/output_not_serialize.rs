use serde::Deserialize;

#[derive(Deserialize)]
struct Receipt {
    id: String,
}

#[catbird::task]
async fn send_email(to: String) -> anyhow::Result<Receipt> {
    Ok(Receipt { id: to })
}

fn main() {
    let _ = send_email::call(String::new());
}
