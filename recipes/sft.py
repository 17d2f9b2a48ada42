# accelerate launch recipes/sft.py --config recipes/quickstart/tiny_cpu.yaml
"""Fine-tune a VLM recommender with TRL + LoRA/QLoRA on the rows of `msr data sft`.

Reads top to bottom: parse the recipe (our data arguments, TRL's SFTConfig and ModelConfig; an
unknown key is an error), then train. All logic lives in `msr.train`.

    accelerate launch recipes/sft.py --config recipes/quickstart/tiny_cpu.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sft.py --config recipes/microlens/qwen2_5_vl_3b_lora.yaml
"""

from trl import ModelConfig, SFTConfig, TrlParser

from msr.train import SftScriptArguments, train


def main() -> None:
    parser = TrlParser((SftScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    out = train(script_args, training_args, model_args)
    print(f"adapter and model card in {out}")


if __name__ == "__main__":
    main()
