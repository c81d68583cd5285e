//! Builds the configured providers once at start-up; sessions share them through `Arc`s.

use std::sync::Arc;

use voxd_backends::mock::{MockAsr, MockLlm, MockTts};
use voxd_backends::{Asr, BuildError, Llm, ToolRegistry, ToolSpec, Tts};

use crate::config::{AsrProvider, Config, LlmProvider, TtsProvider};

/// The providers every session uses.
#[derive(Clone)]
pub struct Providers {
    /// Speech to text.
    pub asr: Arc<dyn Asr>,
    /// The language model.
    pub llm: Arc<dyn Llm>,
    /// Text to speech.
    pub tts: Arc<dyn Tts>,
    /// The tools the LLM may call.
    pub tools: Arc<ToolRegistry>,
    /// The tools' specs, offered to the LLM in every request.
    pub tool_specs: Arc<[ToolSpec]>,
}

impl Providers {
    /// Builds the providers named in `config`.
    ///
    /// # Errors
    /// A `BuildError` when a provider's configuration or files are unusable.
    pub fn build(config: &Config) -> Result<Providers, BuildError> {
        let file = &config.file;
        let asr: Arc<dyn Asr> = match file.asr.provider {
            AsrProvider::Mock => Arc::new(MockAsr::new(file.asr.mock.clone(), &config.base_dir)?),
        };
        let llm: Arc<dyn Llm> = match file.llm.provider {
            LlmProvider::Mock => Arc::new(MockLlm::new(file.llm.mock.clone())?),
        };
        let tts: Arc<dyn Tts> = match file.tts.provider {
            TtsProvider::Mock => Arc::new(MockTts::new(file.tts.mock.clone())?),
        };
        let tools = ToolRegistry::from_mock_config(&config.tools)?;
        let tool_specs = tools.specs().into();
        Ok(Providers {
            asr,
            llm,
            tts,
            tools: Arc::new(tools),
            tool_specs,
        })
    }
}
