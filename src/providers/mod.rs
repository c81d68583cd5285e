//! Builds the configured providers once at start-up; sessions share them through `Arc`s. Each
//! stage is a fallback chain (`fallback.rs`): `[asr] providers = ["openai", "mock"]` tries the
//! first and moves to the next on a failure or timeout.

use std::sync::Arc;

use voxd_backends::espeak::EspeakTts;
use voxd_backends::mock::{MockAsr, MockLlm, MockTts};
use voxd_backends::openai::{OpenAiAsr, OpenAiLlm, OpenAiTts};
use voxd_backends::stream_asr::StreamAsrProvider;
use voxd_backends::{Asr, BuildError, Llm, StreamingAsr, ToolRegistry, ToolSpec, Tts};
use voxd_core::Stage;

use crate::config::{AsrProvider, Config, LlmProvider, TtsProvider};

mod fallback;

pub(crate) use fallback::{failure, timed_out, Attempt, Named};
pub use fallback::{BreakerConfig, Chain};

/// The providers every session uses.
#[derive(Clone)]
pub struct Providers {
    /// Speech to text.
    pub asr: Arc<Chain<dyn Asr>>,
    /// The first ASR provider's streaming side, when it has one (`stream`): sessions send it the
    /// audio while the user speaks. The chain's other providers are the fallback.
    pub streaming_asr: Option<Arc<dyn StreamingAsr>>,
    /// The language model.
    pub llm: Arc<Chain<dyn Llm>>,
    /// Text to speech.
    pub tts: Arc<Chain<dyn Tts>>,
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
        let settings = &config.providers;
        let base_dir = &config.base_dir;
        let breaker = BreakerConfig {
            failure_threshold: settings.breaker.failure_threshold,
            cooldown: settings.breaker.cooldown,
        };
        let (asr_tables, llm_tables, tts_tables) = (
            &settings.asr_tables,
            &settings.llm_tables,
            &settings.tts_tables,
        );
        let mut asr: Vec<Arc<dyn Asr>> = Vec::new();
        let mut streaming_asr: Option<Arc<dyn StreamingAsr>> = None;
        for &p in &settings.asr {
            asr.push(match p {
                AsrProvider::Mock => Arc::new(
                    MockAsr::new(asr_tables.mock.clone(), base_dir)
                        .map_err(|e| e.in_table("asr.mock"))?,
                ),
                AsrProvider::Openai => Arc::new(
                    OpenAiAsr::new(asr_tables.openai.clone(), base_dir)
                        .map_err(|e| e.in_table("asr.openai"))?,
                ),
                AsrProvider::Stream => {
                    let p = Arc::new(
                        StreamAsrProvider::new(asr_tables.stream.clone(), base_dir)
                            .map_err(|e| e.in_table("asr.stream"))?,
                    );
                    if asr.is_empty() {
                        streaming_asr = Some(p.clone());
                    }
                    p
                }
            });
        }
        let mut llm: Vec<Arc<dyn Llm>> = Vec::new();
        for &p in &settings.llm {
            llm.push(match p {
                LlmProvider::Mock => Arc::new(
                    MockLlm::new(llm_tables.mock.clone()).map_err(|e| e.in_table("llm.mock"))?,
                ),
                LlmProvider::Openai => Arc::new(
                    OpenAiLlm::new(llm_tables.openai.clone(), base_dir)
                        .map_err(|e| e.in_table("llm.openai"))?,
                ),
            });
        }
        let mut tts: Vec<Arc<dyn Tts>> = Vec::new();
        for &p in &settings.tts {
            tts.push(match p {
                TtsProvider::Mock => Arc::new(
                    MockTts::new(tts_tables.mock.clone()).map_err(|e| e.in_table("tts.mock"))?,
                ),
                TtsProvider::Openai => Arc::new(
                    OpenAiTts::new(tts_tables.openai.clone(), base_dir)
                        .map_err(|e| e.in_table("tts.openai"))?,
                ),
                TtsProvider::Espeak => Arc::new(
                    EspeakTts::new(tts_tables.espeak.clone(), base_dir)
                        .map_err(|e| e.in_table("tts.espeak"))?,
                ),
            });
        }
        let tools = ToolRegistry::from_config(&settings.tools, base_dir)
            .map_err(|e| e.in_table("tools"))?;
        let tool_specs = tools.specs().into();
        Ok(Providers {
            asr: Arc::new(Chain::new(Stage::Asr, asr, breaker)),
            streaming_asr,
            llm: Arc::new(Chain::new(Stage::Llm, llm, breaker)),
            tts: Arc::new(Chain::new(Stage::Tts, tts, breaker)),
            tools: Arc::new(tools),
            tool_specs,
        })
    }

    /// `build`, then the `[mcp.NAME]` servers: each is connected and its tools listed and
    /// registered beside the `[tools.*]` ones (backends' `tools::connect_mcp`).
    ///
    /// # Errors
    /// `build`'s, a server that cannot be reached or listed (keyed `mcp.NAME.url` or
    /// `mcp.NAME.command`), and a tool name that two tools would share (keyed `mcp.NAME.prefix`).
    pub async fn connect(config: &Config) -> Result<Providers, BuildError> {
        let mut providers = Self::build(config)?;
        let servers = &config.providers.mcp;
        if servers.is_empty() {
            return Ok(providers);
        }
        let mut registry = (*providers.tools).clone();
        for (name, server) in servers {
            let table = format!("mcp.{name}");
            let tools = voxd_backends::tools::connect_mcp(name, server, &config.base_dir)
                .await
                .map_err(|e| e.in_table(&table))?;
            for tool in tools {
                let tool_name = tool.spec().name.clone();
                if registry.get(&tool_name).is_some() {
                    return Err(BuildError::Invalid {
                        key: format!("{table}.prefix"),
                        message: format!(
                            "the server's tool {tool_name:?} has the name of a tool already \
                             offered (a [tools.*] table or another server's); set a prefix to \
                             tell them apart"
                        ),
                    });
                }
                registry.register(tool);
            }
            tracing::info!(server = %name, tools = ?registry.names(), "MCP server connected");
        }
        providers.tool_specs = registry.specs().into();
        providers.tools = Arc::new(registry);
        Ok(providers)
    }

    /// Every stage's providers and breakers, for `/health/ready`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "asr": self.asr.status(),
            "llm": self.llm.status(),
            "tts": self.tts.status(),
        })
    }

    /// Whether every stage has a provider that would take a request now.
    pub fn available(&self) -> bool {
        self.asr.available() && self.llm.available() && self.tts.available()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::FileConfig;

    #[test]
    fn the_shipped_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let espeak = std::process::Command::new("espeak-ng")
            .arg("--version")
            .output()
            .is_ok();
        for file in [
            "config.toml",
            "scripts/peer-workload.toml",
            "scripts/soak.toml",
            "examples/config.openai.toml",
            "examples/config.espeak.toml",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let mut f = FileConfig::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            // The keys' env vars are the user's; building needs no network, only the settings.
            f.asr.openai.api_key_env = None;
            f.asr.stream.api_key_env = None;
            f.llm.openai.api_key_env = None;
            f.tts.openai.api_key_env = None;
            if !espeak && (file.contains("espeak") || file.contains("openai")) {
                eprintln!("{file}: parsed; not built, since espeak-ng is not installed");
                continue;
            }
            let base = root.join(file).parent().unwrap().to_owned();
            let config = Config::from_file(f, &base).unwrap_or_else(|e| panic!("{file}: {e}"));
            Providers::build(&config).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    /// A provider names the key within its own table; the error says which table.
    #[test]
    fn a_provider_error_names_the_key_with_its_table() {
        let config = Config::from_toml(
            "[llm]\nprovider = \"openai\"\n[llm.openai]\napi_key_env = \"VOXD_TEST_UNSET_KEY_VAR\"\n",
            std::path::Path::new("."),
        )
        .expect("a valid config");
        let err = Providers::build(&config).err().expect("the key is unset");
        let message = err.to_string();
        assert!(message.contains("llm.openai.api_key_env"), "{message}");
    }
}
