"""GENERATED from vLLM by `python scripts/engine_arg_types.py`: do not edit (serving/engine/engine_arg_types.py)."""

TABLE = r"""
{
 "class": "vllm.engine.arg_utils.AsyncEngineArgs",
 "fields": {
  "_api_process_count": "int",
  "_api_process_rank": "int",
  "additional_config": {
   "dict": [
    "str",
    "any"
   ]
  },
  "aggregate_engine_logging": "bool",
  "all2all_backend": {
   "literal": [
    "naive",
    "pplx",
    "deepep_high_throughput",
    "deepep_low_latency",
    "deepep_v2",
    "mori_high_throughput",
    "mori_low_latency",
    "moonep",
    "nixl_ep",
    "allgather_reducescatter",
    "flashinfer_all2allv",
    "flashinfer_nvlink_two_sided",
    "flashinfer_nvlink_one_sided",
    "passthrough"
   ]
  },
  "allow_deprecated_quantization": "bool",
  "allowed_local_media_path": "str",
  "allowed_media_domains": {
   "union": [
    {
     "list": "str"
    },
    "null"
   ]
  },
  "async_scheduling": {
   "union": [
    "bool",
    "null"
   ]
  },
  "attention_backend": {
   "union": [
    {
     "literal": [
      "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend",
      "FLASH_ATTN",
      "vllm.v1.attention.backends.flash_attn_diffkv.FlashAttentionDiffKVBackend",
      "FLASH_ATTN_DIFFKV",
      "vllm.v1.attention.backends.triton_attn.TritonAttentionBackend",
      "TRITON_ATTN",
      "vllm.v1.attention.backends.triton_attn_diffkv.TritonAttentionDiffKVBackend",
      "TRITON_ATTN_DIFFKV",
      "vllm.v1.attention.backends.triton_flash_attn.TritonFlashAttentionBackend",
      "TRITON_FLASH_ATTN",
      "vllm.v1.attention.backends.rocm_attn.RocmAttentionBackend",
      "ROCM_ATTN",
      "vllm.v1.attention.backends.rocm_segmented_attn.RocmSegmentedAttentionBackend",
      "ROCM_SEGMENTED_ATTN",
      "vllm.v1.attention.backends.mla.rocm_aiter_mla.AiterMLABackend",
      "ROCM_AITER_MLA",
      "vllm.v1.attention.backends.mla.aiter_triton_mla.AiterTritonMLABackend",
      "ROCM_AITER_TRITON_MLA",
      "vllm.v1.attention.backends.rocm_aiter_fa.AiterFlashAttentionBackend",
      "ROCM_AITER_FA",
      "vllm.v1.attention.backends.mla.rocm_aiter_mla_sparse.ROCMAiterMLASparseBackend",
      "ROCM_AITER_MLA_SPARSE",
      "vllm.v1.attention.backends.mla.xpu_mla_sparse.XPUMLASparseBackend",
      "XPU_MLA_SPARSE",
      "",
      "TORCH_SDPA",
      "vllm.v1.attention.backends.flashinfer.FlashInferBackend",
      "FLASHINFER",
      "vllm.v1.attention.backends.triton_flashinfer.TritonFlashInferBackend",
      "TRITON_FLASHINFER",
      "vllm.v1.attention.backends.mla.flashinfer_mla.FlashInferMLABackend",
      "FLASHINFER_MLA",
      "vllm.v1.attention.backends.mla.tokenspeed_mla.TokenspeedMLABackend",
      "TOKENSPEED_MLA",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse.FlashInferMLASparseTRTLLMBackend",
      "FLASHINFER_MLA_SPARSE",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse.FlashInferMLASparseSM120Backend",
      "FLASHINFER_MLA_SPARSE_SM120",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse_sm90.FlashInferMLASparseSM90Backend",
      "FLASHINFER_MLA_SPARSE_SM90",
      "vllm.v1.attention.backends.mla.triton_mla.TritonMLABackend",
      "TRITON_MLA",
      "vllm.v1.attention.backends.mla.cutlass_mla.CutlassMLABackend",
      "CUTLASS_MLA",
      "vllm.v1.attention.backends.mla.flashmla.FlashMLABackend",
      "FLASHMLA",
      "vllm.v1.attention.backends.mla.flashmla_sparse.FlashMLASparseBackend",
      "FLASHMLA_SPARSE",
      "vllm.models.deepseek_v4.sparse_mla.DeepseekV4FlashMLABackend",
      "FLASHMLA_SPARSE_DSV4",
      "vllm.models.deepseek_v4.nvidia.flashinfer_sparse.DeepseekV4FlashInferMLASparseBackend",
      "FLASHINFER_MLA_SPARSE_DSV4",
      "vllm.models.deepseek_v4.amd.rocm.DeepseekV4ROCMAiterMLASparseBackend",
      "ROCM_FLASHMLA_SPARSE_DSV4",
      "vllm.models.deepseek_v41.sparse_mla.DeepseekV4FlashMLABackend",
      "FLASHMLA_SPARSE_DSV41",
      "vllm.models.deepseek_v41.nvidia.flashinfer_sparse.DeepseekV4FlashInferMLASparseBackend",
      "FLASHINFER_MLA_SPARSE_DSV41",
      "vllm.models.deepseek_v41.sparse_mla.FlashMLAMegaAttnBackend",
      "FLASHMLA_MEGA_ATTN_DSV41",
      "vllm.v1.attention.backends.b12x.B12xPagedAttentionBackend",
      "B12X",
      "vllm.v1.attention.backends.mla.flashattn_mla.FlashAttnMLABackend",
      "FLASH_ATTN_MLA",
      "vllm.v1.attention.backends.mla.flashattn_mla_sparse.FlashAttnMLASparseBackend",
      "FLASH_ATTN_MLA_SPARSE",
      "vllm.models.minimax_m3.common.sparse_attention.MiniMaxM3SparseBackend",
      "MINIMAX_M3_SPARSE",
      "vllm.models.minimax_m3.nvidia.sparse_attention_msa.MiniMaxM3SparseCutlassBackend",
      "CUTLASS_MSA",
      "vllm.models.minimax_m3.nvidia.sparse_attention_msa.MiniMaxM3SparseTritonBackend",
      "TRITON_MSA",
      "vllm.v1.attention.backends.no_attention.NoAttentionBackend",
      "NO_ATTENTION",
      "vllm.v1.attention.backends.flex_attention.FlexAttentionBackend",
      "FLEX_ATTENTION",
      "vllm.v1.attention.backends.hpc_attn.HpcAttentionBackend",
      "HPC_ATTN",
      "vllm.v1.attention.backends.rocm_aiter_unified_attn.RocmAiterUnifiedAttentionBackend",
      "ROCM_AITER_UNIFIED_ATTN",
      "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend",
      "CPU_ATTN",
      "vllm.v1.attention.backends.mla.cpu_mla.CPUMLABackend",
      "CPU_MLA",
      "vllm.v1.attention.backends.mla.amx_mla.AMXMLABackend",
      "AMX_MLA",
      "vllm.v1.attention.backends.turboquant_attn.TurboQuantAttentionBackend",
      "TURBOQUANT",
      "vllm.v1.attention.backends.ultraquant_attn.UltraQuantAttentionBackend",
      "ULTRAQUANT",
      "CUSTOM"
     ]
    },
    "null"
   ]
  },
  "attention_config": {
   "config": "AttentionConfig",
   "fields": {
    "backend": "any",
    "backend_per_kind": "any",
    "disable_flashinfer_q_quantization": "bool",
    "flash_attn_max_num_splits_for_cuda_graph": "int",
    "flash_attn_version": {
     "union": [
      {
       "literal": [
        2,
        3,
        4
       ]
      },
      "null"
     ]
    },
    "flex_attn_block_m": {
     "union": [
      "int",
      "null"
     ]
    },
    "flex_attn_block_n": {
     "union": [
      "int",
      "null"
     ]
    },
    "flex_attn_kv_block_size": {
     "union": [
      "int",
      "null"
     ]
    },
    "flex_attn_q_block_size": {
     "union": [
      "int",
      "null"
     ]
    },
    "hisparse_config": {
     "union": [
      {
       "config": "HiSparseConfig",
       "fields": {
        "device_buffer_size": {
         "union": [
          "int",
          "null"
         ]
        },
        "eager_host_mirror": "bool"
       }
      },
      "null"
     ]
    },
    "indexer_kv_dtype": {
     "literal": [
      "auto",
      "bf16",
      "fp8",
      "mxfp4",
      "nvfp4"
     ]
    },
    "indexer_sparse_logits": "bool",
    "minimax_m3_msa_decode_backend": {
     "literal": [
      "triton",
      "cutlass"
     ]
    },
    "mla_prefill_backend": "any",
    "sparse_mla_force_mqa": "bool",
    "sparse_mla_prefill_workspace_factor": {
     "union": [
      "int",
      "null"
     ]
    },
    "tokenspeed_mla_min_split_kv": "int",
    "tq_max_kv_splits_for_cuda_graph": "int",
    "use_non_causal": "bool",
    "use_prefill_query_quantization": "bool",
    "use_trtllm_attention": {
     "union": [
      "bool",
      "null"
     ]
    }
   }
  },
  "aux_output_config": {
   "config": "AuxOutputConfig",
   "fields": {
    "enable_return_routed_experts": "bool",
    "max_bytes": {
     "union": [
      "int",
      "null"
     ]
    }
   }
  },
  "block_size": {
   "union": [
    "int",
    "null"
   ]
  },
  "code_revision": {
   "union": [
    "str",
    "null"
   ]
  },
  "collect_detailed_traces": {
   "union": [
    {
     "list": {
      "literal": [
       "model",
       "worker",
       "all"
      ]
     }
    },
    "null"
   ]
  },
  "compilation_config": {
   "config": "CompilationConfig",
   "fields": {
    "backend": "str",
    "cache_dir": "str",
    "compile_cache_save_format": {
     "literal": [
      "binary",
      "unpacked"
     ]
    },
    "compile_mm_encoder": "bool",
    "compile_ranges_endpoints": {
     "union": [
      {
       "list": "int"
      },
      "null"
     ]
    },
    "compile_sizes": {
     "union": [
      {
       "list": {
        "union": [
         "int",
         "str"
        ]
       }
      },
      "null"
     ]
    },
    "cudagraph_capture_sizes": {
     "list": "int"
    },
    "cudagraph_copy_inputs": "bool",
    "cudagraph_decoder_replay": "bool",
    "cudagraph_mm_encoder": "bool",
    "cudagraph_mode": "any",
    "cudagraph_num_of_warmups": "int",
    "cudagraph_specialize_lora": "bool",
    "custom_ops": {
     "list": "str"
    },
    "debug_dump_path": "any",
    "decoder_replay_cudagraph_capture_sizes": {
     "list": "int"
    },
    "decoder_replay_trim_threshold": "int",
    "dynamic_shapes_config": {
     "config": "DynamicShapesConfig",
     "fields": {
      "assume_32_bit_indexing": "bool",
      "evaluate_guards": "bool",
      "type": {
       "literal": [
        "backed",
        "BACKED",
        "unbacked",
        "UNBACKED",
        "backed_size_oblivious",
        "BACKED_SIZE_OBLIVIOUS"
       ]
      }
     }
    },
    "encoder_cudagraph_max_frames_per_batch": {
     "union": [
      "int",
      "null"
     ]
    },
    "encoder_cudagraph_max_vision_items_per_batch": "int",
    "encoder_cudagraph_token_budgets": {
     "list": "int"
    },
    "fast_moe_cold_start": {
     "union": [
      "bool",
      "null"
     ]
    },
    "inductor_compile_config": {
     "dict": [
      "any",
      "any"
     ]
    },
    "inductor_passes": {
     "dict": [
      "str",
      "str"
     ]
    },
    "ir_enable_torch_wrap": "any",
    "max_cudagraph_capture_size": "any",
    "mode": "any",
    "pass_config": "any",
    "splitting_ops": {
     "union": [
      {
       "list": "str"
      },
      "null"
     ]
    },
    "use_inductor_graph_partition": "any"
   }
  },
  "config_format": "str",
  "convert": {
   "literal": [
    "auto",
    "none",
    "embed",
    "classify"
   ]
  },
  "cp_kv_cache_interleave_size": {
   "union": [
    "int",
    "null"
   ]
  },
  "cpu_distributed_timeout_seconds": {
   "union": [
    "int",
    "null"
   ]
  },
  "cpu_offload_gb": "float",
  "cpu_offload_params": {
   "set": "str"
  },
  "cudagraph_capture_sizes": {
   "union": [
    {
     "list": "int"
    },
    "null"
   ]
  },
  "cudagraph_metrics": "bool",
  "custom_histogram_buckets": {
   "union": [
    {
     "dict": [
      "str",
      {
       "list": "float"
      }
     ]
    },
    "null"
   ]
  },
  "data_parallel_address": {
   "union": [
    "str",
    "null"
   ]
  },
  "data_parallel_backend": {
   "literal": [
    "ray",
    "mp"
   ]
  },
  "data_parallel_external_lb": "bool",
  "data_parallel_hybrid_lb": "bool",
  "data_parallel_multi_port_external_lb": "bool",
  "data_parallel_rank": {
   "union": [
    "int",
    "null"
   ]
  },
  "data_parallel_rpc_port": {
   "union": [
    "int",
    "null"
   ]
  },
  "data_parallel_size": "int",
  "data_parallel_size_local": {
   "union": [
    "int",
    "null"
   ]
  },
  "data_parallel_start_rank": {
   "union": [
    "int",
    "null"
   ]
  },
  "dbo_decode_token_threshold": "int",
  "dbo_prefill_token_threshold": "int",
  "dcp_comm_backend": {
   "union": [
    {
     "literal": [
      "ag_rs",
      "a2a"
     ]
    },
    "null"
   ]
  },
  "dcp_kv_cache_interleave_size": "int",
  "dcp_q_replicate": {
   "union": [
    "bool",
    "null"
   ]
  },
  "decode_context_parallel_size": "int",
  "default_mm_loras": {
   "union": [
    {
     "dict": [
      "str",
      "str"
     ]
    },
    "null"
   ]
  },
  "device_ids": {
   "union": [
    {
     "list": {
      "union": [
       "int",
       "str"
      ]
     }
    },
    "null"
   ]
  },
  "diffusion_config": {
   "union": [
    {
     "dict": [
      "str",
      "any"
     ]
    },
    "null"
   ]
  },
  "disable_cascade_attn": {
   "union": [
    "bool",
    "null"
   ]
  },
  "disable_chunked_mm_input": "bool",
  "disable_custom_all_reduce": "bool",
  "disable_hybrid_kv_cache_manager": {
   "union": [
    "bool",
    "null"
   ]
  },
  "disable_log_stats": "bool",
  "disable_nccl_for_dp_synchronization": {
   "union": [
    "bool",
    "null"
   ]
  },
  "disable_sliding_window": "bool",
  "distributed_executor_backend": "any",
  "distributed_timeout_seconds": {
   "union": [
    "int",
    "null"
   ]
  },
  "download_dir": {
   "union": [
    "str",
    "null"
   ]
  },
  "dp_sync_interval": "int",
  "dtype": {
   "literal": [
    "auto",
    "half",
    "float16",
    "bfloat16",
    "float",
    "float32"
   ]
  },
  "ec_manager_config": {
   "config": "EncoderCacheManagerConfig",
   "fields": {
    "encoder_cache_manager_cls": {
     "union": [
      "str",
      "null"
     ]
    },
    "manager_config": {
     "dict": [
      "str",
      "any"
     ]
    }
   }
  },
  "ec_transfer_config": {
   "union": [
    {
     "config": "ECTransferConfig",
     "fields": {
      "ec_buffer_device": {
       "union": [
        "str",
        "null"
       ]
      },
      "ec_buffer_size": "float",
      "ec_connector": {
       "union": [
        "str",
        "null"
       ]
      },
      "ec_connector_extra_config": {
       "dict": [
        "str",
        "any"
       ]
      },
      "ec_connector_module_path": {
       "union": [
        "str",
        "null"
       ]
      },
      "ec_ip": "str",
      "ec_port": "int",
      "ec_role": {
       "union": [
        {
         "literal": [
          "ec_producer",
          "ec_both",
          "ec_consumer"
         ]
        },
        "null"
       ]
      },
      "engine_id": {
       "union": [
        "str",
        "null"
       ]
      }
     }
    },
    "null"
   ]
  },
  "elastic_ep_max_dp_size": {
   "union": [
    "int",
    "null"
   ]
  },
  "enable_batch_sharded_sampling": {
   "union": [
    "bool",
    "null"
   ]
  },
  "enable_chunked_prefill": {
   "union": [
    "bool",
    "null"
   ]
  },
  "enable_cumem_allocator": "bool",
  "enable_dbo": "bool",
  "enable_elastic_ep": "bool",
  "enable_ep_weight_filter": "bool",
  "enable_eplb": "bool",
  "enable_expert_parallel": "bool",
  "enable_fault_tolerance": "bool",
  "enable_flashinfer_autotune": {
   "union": [
    "bool",
    "null"
   ]
  },
  "enable_hc_sp": "bool",
  "enable_layerwise_nvtx_tracing": "bool",
  "enable_log_requests": "bool",
  "enable_logging_iteration_details": "bool",
  "enable_lora": "bool",
  "enable_mamba_cache_stochastic_rounding": "bool",
  "enable_mamba_shared_prefix_checkpoint": "bool",
  "enable_mfu_metrics": "bool",
  "enable_mixed_moe_lora_format": "bool",
  "enable_mm_embeds": "bool",
  "enable_mm_processor_stats": "bool",
  "enable_moe_shared_loras": "bool",
  "enable_nccl_comm_suspend": "bool",
  "enable_prefix_caching": {
   "union": [
    "bool",
    "null"
   ]
  },
  "enable_prompt_embeds": "bool",
  "enable_return_routed_experts": "bool",
  "enable_shm_tensor_arena": "bool",
  "enable_sleep_mode": "bool",
  "enable_tower_connector_lora": "bool",
  "enable_trace_replay": "bool",
  "enforce_eager": "bool",
  "engram_config": {
   "union": [
    {
     "config": "EngramConfig",
     "fields": {
      "cpu_offload": "bool",
      "dp_shared_memory": {
       "union": [
        "bool",
        "null"
       ]
      },
      "embedding_across_dp": "bool",
      "use_thp": "bool"
     }
    },
    "null"
   ]
  },
  "eplb_config": {
   "config": "EPLBConfig",
   "fields": {
    "communicator": {
     "union": [
      {
       "literal": [
        "torch_nccl",
        "torch_gloo",
        "torch_xccl",
        "nixl",
        "pynccl"
       ]
      },
      "null"
     ]
    },
    "enable_migration_batching": "bool",
    "log_balancedness": "bool",
    "log_balancedness_interval": "int",
    "num_redundant_experts": "int",
    "policy": {
     "literal": [
      "default"
     ]
    },
    "step_interval": "int",
    "use_async": "bool",
    "window_size": "int"
   }
  },
  "expert_placement_strategy": {
   "literal": [
    "linear",
    "round_robin"
   ]
  },
  "fail_on_environ_validation": "bool",
  "fault_tolerance_config": {
   "config": "FaultToleranceConfig",
   "fields": {
    "engine_recovery_timeout_sec": "int"
   }
  },
  "fully_sharded_loras": "bool",
  "gdn_prefill_backend": {
   "union": [
    {
     "literal": [
      "flashinfer",
      "triton",
      "cutedsl",
      "aiter_flydsl"
     ]
    },
    "null"
   ]
  },
  "generation_config": "str",
  "gpu_memory_utilization": "float",
  "hf_config_path": {
   "union": [
    "str",
    "null"
   ]
  },
  "hf_overrides": "any",
  "hf_token": {
   "union": [
    "bool",
    "str",
    "null"
   ]
  },
  "ignore_patterns": {
   "union": [
    "str",
    {
     "list": "str"
    }
   ]
  },
  "interleave_mm_strings": "bool",
  "io_processor_plugin": {
   "union": [
    "str",
    "null"
   ]
  },
  "ir_op_priority": {
   "config": "IrOpPriorityConfig",
   "fields": {
    "fused_add_rms_norm": {
     "list": "str"
    },
    "gelu_and_mul_sparse": {
     "list": "str"
    },
    "rms_norm": {
     "list": "str"
    }
   }
  },
  "jit_monitor_mode": {
   "literal": [
    "warn",
    "error"
   ]
  },
  "jit_monitor_verbose": "bool",
  "kda_decode_backend": {
   "union": [
    {
     "literal": [
      "auto",
      "native",
      "flashinfer",
      "triton"
     ]
    },
    "null"
   ]
  },
  "kda_prefill_backend": {
   "union": [
    {
     "literal": [
      "auto",
      "triton",
      "flashkda",
      "flashinfer",
      "fused"
     ]
    },
    "null"
   ]
  },
  "kernel_config": {
   "config": "KernelConfig",
   "fields": {
    "enable_cutedsl_warmup": "any",
    "enable_flashinfer_autotune": "any",
    "enable_jit_warmup": "any",
    "enable_rocm_segmented_attn_autotune": "bool",
    "ir_op_priority": {
     "config": "IrOpPriorityConfig",
     "fields": {
      "fused_add_rms_norm": {
       "list": "str"
      },
      "gelu_and_mul_sparse": {
       "list": "str"
      },
      "rms_norm": {
       "list": "str"
      }
     }
    },
    "linear_backend": "any",
    "linear_backend_per_quant": {
     "union": [
      {
       "dict": [
        "str",
        {
         "literal": [
          "auto",
          "cutlass",
          "flashinfer_cutlass",
          "flashinfer_cutedsl",
          "flashinfer_trtllm",
          "flashinfer_cudnn",
          "flashinfer_b12x",
          "b12x",
          "marlin",
          "humming",
          "triton",
          "deep_gemm",
          "torch",
          "aiter",
          "machete",
          "fbgemm",
          "conch",
          "exllama",
          "emulation",
          "xpu",
          "xpu_woq"
         ]
        }
       ]
      },
      "null"
     ]
    },
    "moe_backend": "any",
    "sparse_indexer_topk_backend": "any"
   }
  },
  "kv_cache_dtype": {
   "literal": [
    "auto",
    "float16",
    "bfloat16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
    "nvfp4_ds_mla",
    "turboquant_k8v4",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_3bit_nc",
    "ultraquant_4bit",
    "int4_per_token_head",
    "int8_per_token_head",
    "fp8_per_token_head",
    "nvfp4",
    "nvfp4_4over6"
   ]
  },
  "kv_cache_dtype_skip_layers": {
   "list": "str"
  },
  "kv_cache_memory_bytes": {
   "union": [
    "int",
    "null"
   ]
  },
  "kv_cache_metrics": "bool",
  "kv_cache_metrics_sample": "float",
  "kv_events_config": {
   "union": [
    {
     "config": "KVEventsConfig",
     "fields": {
      "buffer_steps": "int",
      "enable_kv_cache_events": "bool",
      "endpoint": "str",
      "hwm": "int",
      "max_queue_size": "int",
      "publisher": {
       "literal": [
        "null",
        "zmq"
       ]
      },
      "replay_endpoint": {
       "union": [
        "str",
        "null"
       ]
      },
      "topic": "str"
     }
    },
    "null"
   ]
  },
  "kv_offloading_backend": {
   "literal": [
    "native",
    "lmcache"
   ]
  },
  "kv_offloading_size": {
   "union": [
    "float",
    "null"
   ]
  },
  "kv_sharing_fast_prefill": "bool",
  "kv_transfer_config": {
   "union": [
    {
     "config": "KVTransferConfig",
     "fields": {
      "enable_permute_local_kv": "bool",
      "engine_id": {
       "union": [
        "str",
        "null"
       ]
      },
      "kv_buffer_device": "str",
      "kv_connector": {
       "union": [
        "str",
        "null"
       ]
      },
      "kv_connector_extra_config": {
       "dict": [
        "str",
        "any"
       ]
      },
      "kv_connector_module_path": {
       "union": [
        "str",
        "null"
       ]
      },
      "kv_load_failure_policy": {
       "literal": [
        "recompute",
        "fail"
       ]
      },
      "kv_port": "int",
      "kv_role": {
       "union": [
        {
         "literal": [
          "kv_producer",
          "kv_both",
          "kv_consumer"
         ]
        },
        "null"
       ]
      }
     }
    },
    "null"
   ]
  },
  "language_model_only": "bool",
  "limit_mm_per_prompt": {
   "dict": [
    "str",
    {
     "union": [
      "int",
      {
       "dict": [
        "str",
        "int"
       ]
      }
     ]
    }
   ]
  },
  "linear_backend": {
   "literal": [
    "auto",
    "cutlass",
    "flashinfer_cutlass",
    "flashinfer_cutedsl",
    "flashinfer_trtllm",
    "flashinfer_cudnn",
    "flashinfer_b12x",
    "b12x",
    "marlin",
    "humming",
    "triton",
    "deep_gemm",
    "torch",
    "aiter",
    "machete",
    "fbgemm",
    "conch",
    "exllama",
    "emulation",
    "xpu",
    "xpu_woq"
   ]
  },
  "load_format": "str",
  "log_config_file": {
   "union": [
    "str",
    "null"
   ]
  },
  "log_level": {
   "union": [
    {
     "literal": [
      "CRITICAL",
      "ERROR",
      "WARNING",
      "INFO",
      "DEBUG",
      "NOTSET"
     ]
    },
    "null"
   ]
  },
  "logging_config": {
   "union": [
    {
     "config": "LoggingConfig",
     "fields": {
      "configure_logging": "bool",
      "formatter": {
       "literal": [
        "text",
        "json"
       ]
      },
      "log_level": {
       "literal": [
        "CRITICAL",
        "ERROR",
        "WARNING",
        "INFO",
        "DEBUG",
        "NOTSET"
       ]
      },
      "pylogging_config_file": {
       "union": [
        "str",
        "null"
       ]
      }
     }
    },
    "null"
   ]
  },
  "logits_processors": {
   "union": [
    {
     "list": "any"
    },
    "null"
   ]
  },
  "logprobs_mode": {
   "literal": [
    "raw_logits",
    "raw_logprobs",
    "processed_logits",
    "processed_logprobs"
   ]
  },
  "long_prefill_token_threshold": "int",
  "long_prefill_token_threshold_adaptive": "bool",
  "lora_dtype": "any",
  "lora_target_modules": {
   "union": [
    {
     "list": "str"
    },
    "null"
   ]
  },
  "mamba_backend": {
   "literal": [
    "triton",
    "TRITON",
    "flashinfer",
    "FLASHINFER",
    "cpu",
    "CPU"
   ]
  },
  "mamba_block_size": {
   "union": [
    "int",
    "null"
   ]
  },
  "mamba_cache_dtype": {
   "literal": [
    "auto",
    "float32",
    "float16",
    "bfloat16"
   ]
  },
  "mamba_cache_mode": {
   "literal": [
    "align",
    "none"
   ]
  },
  "mamba_cache_philox_rounds": "int",
  "mamba_config": {
   "config": "MambaConfig",
   "fields": {
    "backend": "any",
    "enable_stochastic_rounding": "bool",
    "ssu_algorithm": {
     "union": [
      {
       "literal": [
        "auto",
        "simple",
        "vertical",
        "horizontal"
       ]
      },
      "null"
     ]
    },
    "stochastic_rounding_philox_rounds": "int"
   }
  },
  "mamba_ssm_cache_dtype": {
   "literal": [
    "auto",
    "float32",
    "float16",
    "bfloat16"
   ]
  },
  "mamba_ssu_algorithm": {
   "union": [
    {
     "literal": [
      "auto",
      "simple",
      "vertical",
      "horizontal"
     ]
    },
    "null"
   ]
  },
  "master_addr": "str",
  "master_port": "int",
  "max_cpu_loras": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_cudagraph_capture_size": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_logprobs": "int",
  "max_lora_cls_labels": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_lora_rank": {
   "literal": [
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    320,
    512
   ]
  },
  "max_loras": "int",
  "max_model_len": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_active_seqs": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_batched_tokens": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_queued_reqs": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_queued_tokens": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_scheduled_tokens": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_num_seqs": {
   "union": [
    "int",
    "null"
   ]
  },
  "max_parallel_loading_workers": {
   "union": [
    "int",
    "null"
   ]
  },
  "media_io_kwargs": {
   "dict": [
    "str",
    {
     "dict": [
      "str",
      "any"
     ]
    }
   ]
  },
  "mm_device_do_normalize": {
   "union": [
    "bool",
    "null"
   ]
  },
  "mm_encoder_attn_backend": {
   "union": [
    {
     "literal": [
      "vllm.v1.attention.backends.flash_attn.FlashAttentionBackend",
      "FLASH_ATTN",
      "vllm.v1.attention.backends.flash_attn_diffkv.FlashAttentionDiffKVBackend",
      "FLASH_ATTN_DIFFKV",
      "vllm.v1.attention.backends.triton_attn.TritonAttentionBackend",
      "TRITON_ATTN",
      "vllm.v1.attention.backends.triton_attn_diffkv.TritonAttentionDiffKVBackend",
      "TRITON_ATTN_DIFFKV",
      "vllm.v1.attention.backends.triton_flash_attn.TritonFlashAttentionBackend",
      "TRITON_FLASH_ATTN",
      "vllm.v1.attention.backends.rocm_attn.RocmAttentionBackend",
      "ROCM_ATTN",
      "vllm.v1.attention.backends.rocm_segmented_attn.RocmSegmentedAttentionBackend",
      "ROCM_SEGMENTED_ATTN",
      "vllm.v1.attention.backends.mla.rocm_aiter_mla.AiterMLABackend",
      "ROCM_AITER_MLA",
      "vllm.v1.attention.backends.mla.aiter_triton_mla.AiterTritonMLABackend",
      "ROCM_AITER_TRITON_MLA",
      "vllm.v1.attention.backends.rocm_aiter_fa.AiterFlashAttentionBackend",
      "ROCM_AITER_FA",
      "vllm.v1.attention.backends.mla.rocm_aiter_mla_sparse.ROCMAiterMLASparseBackend",
      "ROCM_AITER_MLA_SPARSE",
      "vllm.v1.attention.backends.mla.xpu_mla_sparse.XPUMLASparseBackend",
      "XPU_MLA_SPARSE",
      "",
      "TORCH_SDPA",
      "vllm.v1.attention.backends.flashinfer.FlashInferBackend",
      "FLASHINFER",
      "vllm.v1.attention.backends.triton_flashinfer.TritonFlashInferBackend",
      "TRITON_FLASHINFER",
      "vllm.v1.attention.backends.mla.flashinfer_mla.FlashInferMLABackend",
      "FLASHINFER_MLA",
      "vllm.v1.attention.backends.mla.tokenspeed_mla.TokenspeedMLABackend",
      "TOKENSPEED_MLA",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse.FlashInferMLASparseTRTLLMBackend",
      "FLASHINFER_MLA_SPARSE",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse.FlashInferMLASparseSM120Backend",
      "FLASHINFER_MLA_SPARSE_SM120",
      "vllm.v1.attention.backends.mla.flashinfer_mla_sparse_sm90.FlashInferMLASparseSM90Backend",
      "FLASHINFER_MLA_SPARSE_SM90",
      "vllm.v1.attention.backends.mla.triton_mla.TritonMLABackend",
      "TRITON_MLA",
      "vllm.v1.attention.backends.mla.cutlass_mla.CutlassMLABackend",
      "CUTLASS_MLA",
      "vllm.v1.attention.backends.mla.flashmla.FlashMLABackend",
      "FLASHMLA",
      "vllm.v1.attention.backends.mla.flashmla_sparse.FlashMLASparseBackend",
      "FLASHMLA_SPARSE",
      "vllm.models.deepseek_v4.sparse_mla.DeepseekV4FlashMLABackend",
      "FLASHMLA_SPARSE_DSV4",
      "vllm.models.deepseek_v4.nvidia.flashinfer_sparse.DeepseekV4FlashInferMLASparseBackend",
      "FLASHINFER_MLA_SPARSE_DSV4",
      "vllm.models.deepseek_v4.amd.rocm.DeepseekV4ROCMAiterMLASparseBackend",
      "ROCM_FLASHMLA_SPARSE_DSV4",
      "vllm.models.deepseek_v41.sparse_mla.DeepseekV4FlashMLABackend",
      "FLASHMLA_SPARSE_DSV41",
      "vllm.models.deepseek_v41.nvidia.flashinfer_sparse.DeepseekV4FlashInferMLASparseBackend",
      "FLASHINFER_MLA_SPARSE_DSV41",
      "vllm.models.deepseek_v41.sparse_mla.FlashMLAMegaAttnBackend",
      "FLASHMLA_MEGA_ATTN_DSV41",
      "vllm.v1.attention.backends.b12x.B12xPagedAttentionBackend",
      "B12X",
      "vllm.v1.attention.backends.mla.flashattn_mla.FlashAttnMLABackend",
      "FLASH_ATTN_MLA",
      "vllm.v1.attention.backends.mla.flashattn_mla_sparse.FlashAttnMLASparseBackend",
      "FLASH_ATTN_MLA_SPARSE",
      "vllm.models.minimax_m3.common.sparse_attention.MiniMaxM3SparseBackend",
      "MINIMAX_M3_SPARSE",
      "vllm.models.minimax_m3.nvidia.sparse_attention_msa.MiniMaxM3SparseCutlassBackend",
      "CUTLASS_MSA",
      "vllm.models.minimax_m3.nvidia.sparse_attention_msa.MiniMaxM3SparseTritonBackend",
      "TRITON_MSA",
      "vllm.v1.attention.backends.no_attention.NoAttentionBackend",
      "NO_ATTENTION",
      "vllm.v1.attention.backends.flex_attention.FlexAttentionBackend",
      "FLEX_ATTENTION",
      "vllm.v1.attention.backends.hpc_attn.HpcAttentionBackend",
      "HPC_ATTN",
      "vllm.v1.attention.backends.rocm_aiter_unified_attn.RocmAiterUnifiedAttentionBackend",
      "ROCM_AITER_UNIFIED_ATTN",
      "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend",
      "CPU_ATTN",
      "vllm.v1.attention.backends.mla.cpu_mla.CPUMLABackend",
      "CPU_MLA",
      "vllm.v1.attention.backends.mla.amx_mla.AMXMLABackend",
      "AMX_MLA",
      "vllm.v1.attention.backends.turboquant_attn.TurboQuantAttentionBackend",
      "TURBOQUANT",
      "vllm.v1.attention.backends.ultraquant_attn.UltraQuantAttentionBackend",
      "ULTRAQUANT",
      "CUSTOM"
     ]
    },
    "str",
    "null"
   ]
  },
  "mm_encoder_attn_dtype": {
   "union": [
    "str",
    "null"
   ]
  },
  "mm_encoder_fp8_scale_path": {
   "union": [
    "str",
    "null"
   ]
  },
  "mm_encoder_fp8_scale_save_margin": "float",
  "mm_encoder_fp8_scale_save_path": {
   "union": [
    "str",
    "null"
   ]
  },
  "mm_encoder_only": "bool",
  "mm_encoder_tp_mode": {
   "literal": [
    "weights",
    "data"
   ]
  },
  "mm_hasher_algorithm": {
   "literal": [
    "blake3",
    "sha256",
    "sha512"
   ]
  },
  "mm_ipc_gpu_memory_gb": "float",
  "mm_processor_cache_gb": "float",
  "mm_processor_cache_type": {
   "union": [
    {
     "literal": [
      "shm",
      "lru"
     ]
    },
    "null"
   ]
  },
  "mm_processor_device": "str",
  "mm_processor_kwargs": {
   "union": [
    {
     "dict": [
      "str",
      "any"
     ]
    },
    "null"
   ]
  },
  "mm_shm_cache_max_object_size_mb": "int",
  "mm_tensor_ipc": {
   "literal": [
    "direct_rpc",
    "torch_shm"
   ]
  },
  "model": "str",
  "model_class_overrides": {
   "dict": [
    "str",
    "str"
   ]
  },
  "model_impl": "str",
  "model_loader_extra_config": {
   "dict": [
    "any",
    "any"
   ]
  },
  "model_weights": "str",
  "moe_backend": {
   "literal": [
    "auto",
    "triton",
    "batched_triton",
    "deep_gemm",
    "deep_gemm_mega_moe",
    "cutlass",
    "flashinfer_trtllm",
    "flashinfer_cutlass",
    "flashinfer_cutedsl",
    "flashinfer_moe_ep_cutedsl",
    "flashinfer_b12x",
    "b12x",
    "flashinfer_moe_ep_mega_deep_gemm",
    "marlin",
    "humming",
    "triton_unfused",
    "aiter",
    "aiter_mega_moe",
    "aiter_triton_mxfp4_bf16",
    "flydsl",
    "hpc",
    "emulation",
    "rdna3"
   ]
  },
  "nnodes": "int",
  "node_rank": "int",
  "num_gpu_blocks_override": {
   "union": [
    "int",
    "null"
   ]
  },
  "numa_bind": "bool",
  "numa_bind_cpus": {
   "union": [
    {
     "list": "str"
    },
    "null"
   ]
  },
  "numa_bind_nodes": {
   "union": [
    {
     "list": "int"
    },
    "null"
   ]
  },
  "offload_backend": "str",
  "offload_group_size": "int",
  "offload_num_in_group": "int",
  "offload_params": {
   "set": "str"
  },
  "offload_prefetch_step": "int",
  "optimization_level": {
   "literal": [
    0,
    "O0",
    1,
    "O1",
    2,
    "O2",
    3,
    "O3"
   ]
  },
  "otlp_traces_endpoint": {
   "union": [
    "str",
    "null"
   ]
  },
  "override_generation_config": {
   "dict": [
    "str",
    "any"
   ]
  },
  "per_request_spec_decode_metrics": {
   "literal": [
    "none",
    "summary",
    "detailed"
   ]
  },
  "performance_mode": {
   "literal": [
    "balanced",
    "interactivity",
    "throughput"
   ]
  },
  "pipeline_parallel_size": "int",
  "pooler_config": "any",
  "prefill_context_parallel_size": "int",
  "prefill_schedule_interval": "int",
  "prefix_cache_retention_interval": {
   "union": [
    "int",
    "null"
   ]
  },
  "prefix_caching_hash_algo": {
   "literal": [
    "sha256",
    "sha256_cbor",
    "xxhash",
    "xxhash_cbor"
   ]
  },
  "prefix_match_unit": {
   "union": [
    "int",
    "null"
   ]
  },
  "profiler_config": {
   "config": "ProfilerConfig",
   "fields": {
    "active_iterations": "int",
    "capture_torch_profiler": "bool",
    "delay_iterations": "int",
    "detailed_trace_annotation": "bool",
    "ignore_frontend": "bool",
    "max_iterations": "int",
    "profiler": {
     "union": [
      {
       "literal": [
        "torch",
        "cuda",
        "proton"
       ]
      },
      "null"
     ]
    },
    "proton_backend": {
     "union": [
      {
       "literal": [
        "cupti"
       ]
      },
      "null"
     ]
    },
    "proton_context": {
     "literal": [
      "shadow",
      "python"
     ]
    },
    "proton_data": {
     "literal": [
      "tree",
      "trace"
     ]
    },
    "proton_graph_attribution": "bool",
    "proton_hook": {
     "union": [
      {
       "literal": [
        "triton"
       ]
      },
      "null"
     ]
    },
    "proton_mode": {
     "union": [
      "str",
      "null"
     ]
    },
    "proton_output_format": {
     "union": [
      {
       "literal": [
        "hatchet",
        "hatchet_msgpack",
        "chrome_trace"
       ]
      },
      "null"
     ]
    },
    "proton_profiler_dir": "str",
    "torch_profiler_activities": {
     "union": [
      {
       "list": {
        "literal": [
         "CPU",
         "CUDA",
         "PrivateUse1",
         "XPU"
        ]
       }
      },
      "null"
     ]
    },
    "torch_profiler_dir": "str",
    "torch_profiler_dump_cuda_time_total": "bool",
    "torch_profiler_record_shapes": "bool",
    "torch_profiler_use_gzip": "bool",
    "torch_profiler_with_flops": "bool",
    "torch_profiler_with_memory": "bool",
    "torch_profiler_with_stack": "bool",
    "wait_iterations": "int",
    "warmup_iterations": "int"
   }
  },
  "pt_load_map_location": {
   "union": [
    "str",
    {
     "dict": [
      "str",
      "str"
     ]
    }
   ]
  },
  "quantization": {
   "union": [
    "str",
    "null"
   ]
  },
  "quantization_config": "any",
  "ray_workers_use_nsight": "bool",
  "reasoning_config": {
   "union": [
    {
     "config": "ReasoningConfig",
     "fields": {
      "reasoning_end_str": "str",
      "reasoning_parser": "str",
      "reasoning_start_str": "str"
     }
    },
    "null"
   ]
  },
  "reasoning_parser": "str",
  "reasoning_parser_plugin": {
   "union": [
    "str",
    "null"
   ]
  },
  "renderer_num_workers": "int",
  "replayssm_buffer_len": "int",
  "return_sampling_mask": "bool",
  "revision": {
   "union": [
    "str",
    "null"
   ]
  },
  "runner": {
   "literal": [
    "auto",
    "generate",
    "pooling",
    "draft"
   ]
  },
  "safetensors_load_strategy": {
   "union": [
    {
     "literal": [
      "lazy",
      "eager",
      "prefetch",
      "torchao"
     ]
    },
    "null"
   ]
  },
  "safetensors_prefetch_block_size": "int",
  "safetensors_prefetch_num_threads": "int",
  "scheduler_cls": "any",
  "scheduler_reserve_full_isl": "bool",
  "scheduling_policy": {
   "literal": [
    "fcfs",
    "priority"
   ]
  },
  "seed": "int",
  "served_model_name": {
   "union": [
    "str",
    {
     "list": "str"
    },
    "null"
   ]
  },
  "show_hidden_metrics_for_version": {
   "union": [
    "str",
    "null"
   ]
  },
  "shutdown_timeout": "int",
  "skip_mm_profiling": "bool",
  "skip_tokenizer_init": "bool",
  "sleep_mode_offload_cudagraph": "bool",
  "sleep_preserve_parameter_names": {
   "list": "str"
  },
  "sparse_indexer_topk_backend": {
   "literal": [
    "auto",
    "deep_select",
    "cooperative",
    "persistent",
    "per_row",
    "flashinfer",
    "torch",
    "aiter"
   ]
  },
  "spec_method": {
   "union": [
    "str",
    "null"
   ]
  },
  "spec_model": {
   "union": [
    "str",
    "null"
   ]
  },
  "spec_tokens": {
   "union": [
    "int",
    "null"
   ]
  },
  "specialize_active_lora": "bool",
  "speculative_config": {
   "union": [
    {
     "dict": [
      "str",
      "any"
     ]
    },
    "null"
   ]
  },
  "stream_interval": "int",
  "structured_outputs_config": {
   "config": "StructuredOutputsConfig",
   "fields": {
    "backend": {
     "literal": [
      "auto",
      "xgrammar",
      "guidance",
      "outlines",
      "lm-format-enforcer"
     ]
    },
    "disable_additional_properties": "bool",
    "disable_any_whitespace": "bool",
    "enable_in_reasoning": "bool",
    "reasoning_parser": "str",
    "reasoning_parser_plugin": "str"
   }
  },
  "swa_bounded_replay": "bool",
  "tensor_parallel_size": "int",
  "tokenizer": {
   "union": [
    "str",
    "null"
   ]
  },
  "tokenizer_mode": {
   "union": [
    {
     "literal": [
      "auto",
      "hf",
      "mistral",
      "deepseek_v32",
      "deepseek_v4",
      "inkling",
      "kimi_k3",
      "cohere"
     ]
    },
    "str"
   ]
  },
  "tokenizer_revision": {
   "union": [
    "str",
    "null"
   ]
  },
  "tokens_only": "bool",
  "trust_remote_code": "bool",
  "ubatch_size": "int",
  "use_fp64_gumbel": "bool",
  "use_replayssm": "bool",
  "use_tqdm_on_load": "bool",
  "video_pruning_method": "str",
  "video_pruning_rate": {
   "union": [
    "float",
    "null"
   ]
  },
  "watermark": "float",
  "watermark_config": {
   "union": [
    {
     "dict": [
      "str",
      "any"
     ]
    },
    "null"
   ]
  },
  "weight_transfer_config": {
   "union": [
    {
     "config": "WeightTransferConfig",
     "fields": {
      "backend": {
       "union": [
        {
         "literal": [
          "nccl",
          "ipc",
          "sparse_nccl",
          "sharded_rdt",
          "nccl_m2n"
         ]
        },
        "str"
       ]
      }
     }
    },
    "null"
   ]
  },
  "worker_cls": "str",
  "worker_extension_cls": "str"
 },
 "vllm": "0.32.0"
}
"""
