#[catbird::task]
async fn send_email(to: String) -> String {
    to
}

fn main() {}
