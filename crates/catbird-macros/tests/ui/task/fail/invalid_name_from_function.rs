#[allow(non_snake_case)]
#[catbird::task]
async fn sendEmail(to: String) -> anyhow::Result<()> {
    let _ = to;
    Ok(())
}

fn main() {}
