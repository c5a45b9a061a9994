#[catbird::task(name = "Send", concurrency = 0, timeout = "30sec", retries = 3)]
fn send_email(to: String, subject: String) {
    let _ = (to, subject);
}

fn main() {}
