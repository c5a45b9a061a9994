use catbird::worker::Worker;

async fn send_email(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {
    let pool = catbird::pool_from_url("postgres://127.0.0.1/app", 1).unwrap();
    let _ = Worker::new(pool).task(send_email);
}
