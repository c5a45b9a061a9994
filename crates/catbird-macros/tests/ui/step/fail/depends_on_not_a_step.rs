async fn validate(order: u32) -> anyhow::Result<bool> {
    Ok(order > 0)
}

#[allow(non_camel_case_types)]
struct audit {}

#[catbird::step(depends_on(validate, audit))]
async fn charge(order: u32, validate: bool, audit: u32) -> anyhow::Result<u32> {
    Ok(if validate { order + audit } else { 0 })
}

fn main() {}
