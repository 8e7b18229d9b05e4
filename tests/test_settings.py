"""Settings as a user meets them: a fresh process, a settings.ini in their workspace, environment overrides."""


def test_workspace_file_is_found_from_a_subfolder(tmp_path, run_python):
    (tmp_path/'settings.ini').write_text('[core_models]\ndata_path = my_data\nseed = 5\n')
    (tmp_path/'nbs'/'deep').mkdir(parents=True)
    r = run_python('from core_models.settings import get_settings as g; s = g(); print(s.seed, s.path("data_path"))',
                   cwd=tmp_path/'nbs'/'deep', env={'CORE_MODELS_SETTINGS': ''})
    assert r.returncode == 0, r.stderr
    seed, path = r.stdout.split()
    assert seed == '5' and path == str((tmp_path/'my_data').resolve())


def test_no_file_means_defaults(tmp_path, run_python):
    r = run_python('from core_models.settings import get_settings; print(get_settings().device)', env={'CORE_MODELS_SETTINGS': ''})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'auto'


def test_environment_overrides_the_file(tmp_path, run_python):
    (tmp_path/'settings.ini').write_text('[core_models]\nprecision = fp32\n')
    r = run_python('from core_models.settings import get_settings; print(get_settings().precision)',
                   env={'CORE_MODELS_PRECISION': 'bf16', 'CORE_MODELS_SETTINGS': ''})
    assert r.stdout.strip() == 'bf16', r.stderr


def test_malformed_value_names_the_key(tmp_path, run_python):
    (tmp_path/'settings.ini').write_text('[core_models]\nnum_workers = many\n')
    r = run_python('from core_models.settings import get_settings; get_settings()', env={'CORE_MODELS_SETTINGS': ''})
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('core_models.settings.SettingsError') and '`num_workers`' in last and "'many'" in last, last
