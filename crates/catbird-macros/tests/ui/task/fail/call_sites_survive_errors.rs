//! A task whose signature is wrong reports that one problem: the uses of
//! the task elsewhere still compile against the stand-in the macro leaves.
use catbird::worker::Worker;

#[catbird::task]
fn send_email(to: String) -> anyhow::Result<u32> {
    Ok(to.len() as u32)
}

async fn use_it(pool: catbird::deadpool_postgres::Pool) -> Result<u32, catbird::Error> {
    let _worker = Worker::new(pool.clone()).task(send_email);
    let client = catbird::Client::new(pool);
    let handle = send_email::run(&client, &"ada@example.com").await?;
    let length: u32 = handle.wait_for_output().await?;
    let _ = send_email::call(String::new());
    Ok(length)
}

fn main() {
    let _ = use_it;
}
