use serde::Serialize;

#[derive(Serialize)]
struct Email {
    to: String,
}

#[catbird::task]
async fn send_email(email: Email) -> anyhow::Result<()> {
    let _ = email.to;
    Ok(())
}

fn main() {}
