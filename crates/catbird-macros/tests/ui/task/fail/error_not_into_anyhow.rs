#[derive(Debug)]
struct MailError;

#[catbird::task]
async fn send_email(to: String) -> Result<(), MailError> {
    let _ = to;
    Err(MailError)
}

fn main() {}
