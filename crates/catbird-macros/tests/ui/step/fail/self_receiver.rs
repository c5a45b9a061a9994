struct Steps;

impl Steps {
    #[catbird::step]
    async fn validate(&self, order: u32) -> anyhow::Result<bool> {
        Ok(order > 0)
    }
}

fn main() {}
